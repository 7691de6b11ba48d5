from zmqvision.cli import main

main()
