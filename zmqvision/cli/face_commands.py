"""`zmqvision faces enroll|list|remove`: the gallery of known people."""

from __future__ import annotations

import json
import os

import click

from zmqvision.cli.group import cli
from zmqvision.errors import CommandError, ExitCode

# ---------------------------------------------------------------- faces (identity)


@cli.group("faces")
@click.option("--gallery", "gallery_url", default=None, metavar="URL",
              help="Where enrolled people live: sqlite:///PATH, redis://HOST:PORT/DB, "
                   "redis+cluster://HOST:PORT [default: $ZMQVISION_FACES_GALLERY, else "
                   "faces.sqlite3 in the cache directory].")
@click.pass_context
def faces_group(ctx, gallery_url) -> None:
    """Face identity: enrol people from photos, list and remove them (docs/faces.md)."""
    from zmqvision.faces.gallery import Gallery, resolve_url

    url = resolve_url(gallery_url)
    try:
        ctx.obj = Gallery.open(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gallery") from None
    except Exception as exc:  # noqa: BLE001 - unreadable file, no server: say it plainly
        raise CommandError(f"cannot open the face gallery {url}: {exc}") from exc
    ctx.call_on_close(ctx.obj.close)


def _gallery_call(gallery, name: str, *args):
    try:
        return getattr(gallery, name)(*args)
    except (click.ClickException, CommandError):
        raise
    except Exception as exc:  # noqa: BLE001 - Redis down, locked file: no traceback
        raise CommandError(f"face gallery {gallery.url}: {exc}") from exc


@faces_group.command("enroll")
@click.argument("name")
@click.argument("photos", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--device", "-d", default="CPU", show_default=True, help="OpenVINO device.")
@click.pass_obj
def faces_enroll(gallery, name, photos, device) -> None:
    """Enrol NAME from PHOTOS: the largest face of each is aligned, embedded and added.

    Nothing is enrolled if any photo shows no face (the message names it)."""
    import numpy as np

    from zmqvision.faces.embed import FaceEmbedder
    from zmqvision.faces.gallery import GalleryError, check_name
    from zmqvision.faces.identify import NoFace, largest_face_embedding
    from zmqvision.io import ImageError, read_image
    from zmqvision.models import resolve
    from zmqvision.models.runtime import Detector

    try:
        check_name(name)
    except GalleryError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    detector = Detector(resolve("centerface"), device=device)
    embedder = FaceEmbedder(device=device)
    embeddings, problems, seen = [], [], []
    for photo in photos:
        try:
            image = read_image(photo)
            emb, info = largest_face_embedding(image.pixels, detector, embedder, name=photo)
        except (ImageError, NoFace) as exc:
            problems.append(str(exc))
            continue
        embeddings.append(emb)
        seen.append({"photo": os.path.basename(photo), **info})
    if problems:
        raise CommandError("not enrolled: " + "; ".join(problems), ExitCode.USAGE)
    person = _gallery_call(gallery, "enroll", name, np.stack(embeddings),
                           {"photos": [s["photo"] for s in seen],
                            "model": embedder.spec.ref})
    for s in seen:
        extra = f" (largest of {s['faces']} faces)" if s["faces"] > 1 else ""
        click.echo(f"{s['photo']}: face at {s['box']}, score {s['score']}{extra}")
    click.echo(f"{name}: {len(person.embeddings)} embeddings in {gallery.url}")


@faces_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per person.")
@click.pass_obj
def faces_list(gallery, as_json) -> None:
    """Enrolled people, with how many embeddings each has."""
    people = _gallery_call(gallery, "enrolled")
    for p in people:
        if as_json:
            click.echo(json.dumps({"name": p.name, "embeddings": len(p.embeddings),
                                   "dim": int(p.embeddings.shape[1]),
                                   "metadata": p.metadata, "created": p.created}))
        else:
            click.echo(f"{p.name}\t{len(p.embeddings)} embeddings")
    if not as_json:
        click.echo(f"{len(people)} people in {gallery.url}", err=True)


@faces_group.command("remove")
@click.argument("name")
@click.pass_obj
def faces_remove(gallery, name) -> None:
    """Forget NAME and every embedding of theirs."""
    if not _gallery_call(gallery, "remove", name):
        raise CommandError(f"{name!r} is not enrolled in {gallery.url}", ExitCode.USAGE)
    click.echo(f"{name}: removed from {gallery.url}")
