"""The web app's HTTP side (Starlette): the page, its script, and a small JSON API over a
`SegmentService`. Every refusal is JSON `{"error": message}` with a 4xx/5xx status; the page shows
the message."""
from __future__ import annotations

import importlib.resources
import logging

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from input_pipeline.vocab import load_vocabulary, vocabulary_names
from ovs_jax.serve.service import DEMO_IMAGES, NO_IMAGE, RequestError, SegmentService, too_large

log = logging.getLogger(__name__)
FORM_SLACK = 64 * 2**10  # multipart boundaries and the class list on top of the image
STATIC = {"": ("index.html", "text/html"), "app.js": ("app.js", "text/javascript"),
          "style.css": ("style.css", "text/css")}


def error(status: int, message: str) -> JSONResponse:
  return JSONResponse({"error": message}, status_code=status)


def create_app(service: SegmentService) -> Starlette:
  assets = importlib.resources.files(__package__) / "static"

  async def static(request: Request) -> Response:
    name = request.path_params.get("name", "")
    if name not in STATIC:
      return error(404, f"no such file: /static/{name}")
    file, media_type = STATIC[name]
    return Response((assets / file).read_bytes(), media_type=media_type)

  async def info(request: Request) -> JSONResponse:
    limits = service.limits
    return JSONResponse({
        "model": service.name, "default_vocabulary": service.default_vocabulary,
        "vocabularies": [{"name": n, "classes": len(load_vocabulary(n))} for n in vocabulary_names()],
        "limits": {"max_upload_mb": limits.max_upload_bytes / 2**20,
                   "max_megapixels": limits.max_pixels / 1e6, "max_classes": limits.max_classes},
        "demo_images": DEMO_IMAGES})

  async def vocabulary(request: Request) -> JSONResponse:
    name = request.path_params["name"]
    if name not in vocabulary_names():
      return error(404, f"unknown vocabulary {name!r}; expected one of: {', '.join(vocabulary_names())}")
    return JSONResponse({"name": name, "classes": load_vocabulary(name)})

  async def demo_image(request: Request) -> Response:
    i = request.path_params["index"]
    if not 0 <= i < DEMO_IMAGES:
      return error(404, f"demo image {i}: there are {DEMO_IMAGES} (0 to {DEMO_IMAGES - 1})")
    images = await anyio.to_thread.run_sync(lambda: service.demo_images)  # generated on first use
    return Response(images[i], media_type="image/png")

  async def segment(request: Request) -> JSONResponse:
    """multipart form: `image` (file), `classes` (text) or `vocab` (a shipped vocabulary's name)."""
    limit, length = service.limits.max_upload_bytes, int(request.headers.get("content-length") or 0)
    try:
      if length > limit + FORM_SLACK:  # refused before reading the body
        raise too_large("upload", length, limit)
      form = await request.form(max_files=1, max_fields=4)
      upload = form.get("image")
      if upload is None or isinstance(upload, str):
        raise RequestError(400, NO_IMAGE)
      if upload.size is not None and upload.size > limit:  # a chunked upload has no Content-Length
        raise too_large(upload.filename, upload.size, limit)
      data = await upload.read()
      # In a worker thread, so the server keeps answering (and queueing) while the model runs.
      return JSONResponse(await anyio.to_thread.run_sync(
          service.segment, data, upload.filename or "upload", str(form.get("classes") or ""),
          str(form.get("vocab") or "")))
    except RequestError as e:
      return error(e.status, e.message)
    except HTTPException as e:  # the client's fault, e.g. a malformed multipart body: 4xx, its reason
      return error(e.status_code, f"malformed request: {e.detail}")
    except Exception as e:  # a bug or a device failure: the person gets a sentence, the log the trace
      log.exception("segmenting failed")
      return error(500, f"internal error while segmenting ({type(e).__name__}); the server log has "
                        "the details")

  async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return error(exc.status_code, str(exc.detail))  # e.g. a malformed multipart body, 404, 405

  return Starlette(routes=[
      Route("/", static), Route("/static/{name}", static),
      Route("/api/info", info), Route("/api/vocabularies/{name}", vocabulary),
      Route("/api/demo/{index:int}.png", demo_image),
      Route("/api/segment", segment, methods=["POST"]),
  ], exception_handlers={HTTPException: http_error})
