"""The review web app: MONAI Label's HTTP API over the listener's studies, and the reviewer's page.

MONAI Label's shape (``/info/``, ``/infer/{model}``, ``/activelearning/{strategy}``,
``/datastore/...``) lets its client and tools drive the review unchanged; in MONAI Label's words
an "image" is here a study (the unit MURA labels) or one of its radiographs, each with an id of
its own. The page (``/``) is static HTML and JavaScript over the same API.
"""
from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from listener.config import ListenerConfig, ReviewSettings
from listener.review.accounts import AccountStore, SessionStore
from listener.review.admin import AccountAdmin, admin_routes
from listener.review.audit import AuditLog
from listener.review.auth import AuthMiddleware, ReviewAuth, auth_routes, identity_of, require
from listener.review.datastore import ReviewDatastore, ReviewImage, ReviewStudy, radiograph_png
from listener.review.labels import FINDINGS
from listener.review.models import ModelRunner, describe_models
from listener.review.security import MIB, BodyLimit, SecurityHeaders
from listener.review.uploads import store_upload
from listener.review.worklist import STRATEGIES, filter_studies, next_study, worklist_order

__all__ = ["audit_log_path", "create_app"]

logger = logging.getLogger("listener.review")
STATIC = Path(__file__).parent / "static"
OPENED_AUDIT_S = 300  # one "study opened" audit line per person and study in this window


def _error(status: int, detail: str) -> HTTPException:
    return HTTPException(status_code=status, detail=detail)


async def _params(request: Request) -> tuple[dict, dict]:
    """``(params, files)`` of a request as MONAI Label's client sends it (multipart: a ``params``
    field of JSON beside files) or as the page sends it (a JSON body)."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        try:
            raw = form.get("params") or "{}"
            params = json.loads(raw if isinstance(raw, str) else await raw.read()) or {}
        except json.JSONDecodeError:
            raise _error(400, "params must be JSON") from None
        files = {name: await value.read() for name, value in form.multi_items() if hasattr(value, "read")}
        return (params if isinstance(params, dict) else {}), files
    body = await request.body()
    if not body:
        return dict(request.query_params), {}
    try:
        params = json.loads(body)
    except json.JSONDecodeError:
        raise _error(400, "the body must be JSON") from None
    return (params if isinstance(params, dict) else {}), {}


def _finding(label_file: bytes | None, params: dict) -> str:
    """The finding a label carries: a JSON label file (``{"finding": "normal"}`` or
    ``{"abnormal": 0}``), a text file (``abnormal``, ``normal``, ``1``, ``0``), or ``params``."""
    value: object = None
    text = (label_file or b"").decode("utf-8", "replace").strip()
    if text:
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = text
        if isinstance(parsed, dict):
            value = parsed.get("finding", parsed.get("abnormal", parsed.get("label")))
        else:
            value = parsed
    if value is None:
        value = params.get("finding", params.get("abnormal"))
    value = {True: "abnormal", False: "normal", "1": "abnormal", "0": "normal"}.get(  # 1 and 0 are True and False
        value, value) if isinstance(value, (bool, int, str)) else value
    if value not in FINDINGS:
        raise _error(400, f"a label's finding must be one of {', '.join(FINDINGS)} (or 1/0)")
    return str(value)


def _multipart(params: dict, file_name: str | None, data: bytes | None) -> Response:
    """MONAI Label's infer answer: a ``params`` JSON part and the result file (here the heatmap)."""
    boundary = secrets.token_hex(16)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
             f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n".encode()]
    if data is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file_name}"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return Response(b"".join(parts), media_type=f"multipart/form-data; boundary={boundary}")


def audit_log_path(config: ListenerConfig, settings: ReviewSettings) -> Path:
    return config.resolve(settings.audit_log) if settings.audit_log else Path(config.spool_dir) / "audit.jsonl"


def create_app(config: ListenerConfig, settings: ReviewSettings | None = None) -> Starlette:
    """The app for one listener config; ``settings`` default to its ``[review]`` table."""
    from listener.review.server import tls_files

    settings = settings or config.review or ReviewSettings()
    data = ReviewDatastore(config)
    runner = ModelRunner(config)
    show_name = settings.show_patient_name
    https = settings.tls and tls_files(config, settings) is not None
    audit = AuditLog(data.store, audit_log_path(config, settings))
    accounts = AccountStore(data.store)
    sessions = SessionStore(data.store, idle_s=settings.session_idle_minutes * 60, max_s=settings.session_max_hours * 3600)
    auth = ReviewAuth(settings, accounts, sessions, audit, https=https)
    opened: dict[tuple[str | None, str], float] = {}  # (who, study id) -> when its opening was last audited

    def audit_opened(request: Request, study: ReviewStudy, how: str) -> None:
        """Who looked at which study, once per person and study every five minutes (a study view
        fetches each image and heatmap: one audit line says the study was opened)."""
        who = identity_of(request)
        now = time.time()
        if now - opened.get((who.name, study.id), 0.0) < OPENED_AUDIT_S:
            return
        if len(opened) >= 4096:  # what is older than the window no longer holds a line back
            for key in [key for key, at in opened.items() if now - at >= OPENED_AUDIT_S]:
                del opened[key]
        opened[(who.name, study.id)] = now
        audit.record("study_opened", who.name, client=request.client.host if request.client else None, study=study.id,
                     how=how)

    def study_or_404(any_id: str | None) -> tuple[ReviewStudy, ReviewImage | None]:
        found = data.find(any_id or "")
        if found is None:
            raise _error(404, f"no study or image with id {any_id!r}")
        return found

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    def info(request: Request) -> Response:
        from mura_monai.constants import BODY_PARTS

        studies = data.studies()
        models = describe_models(config)
        return JSONResponse({
            "name": "mura-monai review",
            "description": "Abnormality findings of the mura-monai listener, for review (research software: "
                           "not for diagnostic use)",
            "version": _version(),
            "labels": {"abnormal": 1},
            "label_tags": ["original", "final"],
            "models": models,
            "body_parts": list(BODY_PARTS),
            "thresholds": models[runner.name]["config"]["thresholds"],
            "operating_point": models[runner.name]["config"]["operating_point"],
            "trainers": {},
            "strategies": {name: {"description": description} for name, (_, description) in STRATEGIES.items()},
            "scoring": {},
            "train_stats": {},
            "datastore": {"total": len(studies), "completed": sum(s.review != "unreviewed" for s in studies)},
            "show_patient_name": show_name,
        })

    async def infer(request: Request) -> Response:
        model = request.path_params["model"]
        study, image = study_or_404(request.query_params.get("image"))
        audit_opened(request, study, "infer")
        try:
            result, heatmap = await run_in_threadpool(runner.infer, model, study, image)
        except KeyError:
            raise _error(404, f"no model {model!r}; see /info/") from None
        except ValueError as exc:
            raise _error(422, str(exc)) from None
        output = request.query_params.get("output", "all")
        if output == "json" or heatmap is None:
            return JSONResponse(result)
        if output == "image":
            return Response(heatmap, media_type="image/png")
        return _multipart(result, f"{result['image'] or result['study']}_{model}_heatmap.png", heatmap)

    async def activelearning(request: Request) -> Response:
        strategy = request.path_params["strategy"]
        if strategy not in STRATEGIES:
            raise _error(404, f"no strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        params = (await _params(request))[0] if request.method == "POST" else dict(request.query_params)
        seed = params.get("seed")
        chosen = next_study(await run_in_threadpool(data.studies), strategy, body_part=params.get("body_part") or "",
                            seed=int(seed) if seed not in (None, "") else None)
        if chosen is None:
            return JSONResponse({})
        return JSONResponse(chosen.summary(show_name) | {"strategy": strategy,
                                                          "image_ids": [i.id for i in chosen.images]})

    def datastore(request: Request) -> Response:
        studies = data.studies()
        if request.query_params.get("output", "stats") != "all":
            tags = {"original": sum(s.original is not None for s in studies),
                    "final": sum(s.final is not None for s in studies)}
            return JSONResponse({"total": len(studies), "completed": sum(s.review != "unreviewed" for s in studies),
                                 "label_tags": tags, "train": sum(s.final is not None for s in studies)})
        objects = {}
        for s in studies:
            labels = {tag: label.as_dict() for tag, label in (("original", s.original), ("final", s.final)) if label}
            objects[s.id] = {"image": {"info": s.summary(show_name) | {"image_ids": [i.id for i in s.images]}},
                             "labels": labels}
        return JSONResponse({"name": "mura-monai listener spool", "objects": objects})

    async def upload(request: Request) -> Response:
        who = require(request, "reviewer", "uploading a study")
        params, files = await _params(request)
        content = files.get("file")
        if content is None:
            raise _error(400, "upload the DICOM file as the multipart field 'file'")
        try:
            study, iid = await run_in_threadpool(store_upload, config, data, content)
        except ValueError as exc:
            raise _error(415, str(exc)) from None
        audit.record("upload", who.name, client=request.client.host if request.client else None, study=study)
        return JSONResponse({"image": iid, "study": study})

    def studies(request: Request) -> Response:
        q = request.query_params
        listed = filter_studies(worklist_order(data.studies()), body_part=q.get("body_part", ""), state=q.get("state", ""))
        return JSONResponse({"studies": [s.summary(show_name) for s in listed]})

    def study_detail(request: Request) -> Response:
        study, _ = study_or_404(request.query_params.get("study"))
        audit_opened(request, study, "study")
        return JSONResponse(study.detail(data.history(study), show_name))

    def image(request: Request) -> Response:
        study, found = study_or_404(request.query_params.get("image"))
        if found is None:
            raise _error(404, "not an image id")
        audit_opened(request, study, "image")
        try:
            png = radiograph_png(found.path)
        except ValueError as exc:  # RadiographReadError: the file cannot be shown
            raise _error(422, str(exc)) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    def image_info(request: Request) -> Response:
        study, found = study_or_404(request.query_params.get("image"))
        if found is None:
            return JSONResponse(study.summary(show_name) | {"image_ids": [i.id for i in study.images]})
        return JSONResponse(found.summary() | {"study": study.id})

    def heatmap(request: Request) -> Response:
        study, found = study_or_404(request.query_params.get("image"))
        if found is None or found.heatmap is None:
            raise _error(404, "no heatmap for this image")
        audit_opened(request, study, "heatmap")
        return FileResponse(found.heatmap, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def save_label(request: Request) -> Response:
        who = require(request, "reviewer", "saving a label")
        study, found = study_or_404(request.query_params.get("image"))
        tag = request.query_params.get("tag") or "final"  # MONAI Label's default tag
        if tag != "final":
            raise _error(403, "only the 'final' label is written through the API; 'original' is the model's")
        params, files = await _params(request)
        finding = _finding(files.get("label"), params)
        # Who: the signed-in person, whatever the call says. Only an app nobody signs in to (this
        # machine, unconfigured) takes a name from the caller; a label without one is kept as an
        # unattributed API client's (MONAI Label's client and its plugins send only a client_id).
        reviewer: str | None
        reviewer_name: str | None
        if who.is_authenticated:
            reviewer, reviewer_name = who.name, who.display_name
        else:
            reviewer = str(params.get("reviewer") or params.get("user") or "").strip()[:64] or None
            reviewer_name = reviewer
        client_id = str(params.get("client_id") or "").strip()[:64] or None
        comment = str(params.get("comment") or "").strip()[:2000]
        label = await run_in_threadpool(
            data.labels.add, study.study.key, "final", finding, sop_instance_uid=found.sop_instance_uid if found else None,
            reviewer=reviewer, reviewer_name=reviewer_name, comment=comment,
            analysis_version=study.result.analysis_version if study.result else None,
            unattributed=reviewer is None, client_id=client_id)
        revised = False
        if found is None:
            revised = await run_in_threadpool(_revise, config, data, study, finding, reviewer_name)
        audit.record("label_saved", who.name, client=request.client.host if request.client else None, study=study.id,
                     image=found.id if found else None, tag=tag, finding=finding, sr_revised=revised,
                     client_id=client_id, reviewer=reviewer)
        logger.info("label saved", extra={"study": study.id, "tag": tag, "finding": finding, "sr_revised": revised,
                                          "attributed": reviewer is not None})
        refreshed = data.study(study.id) or study  # the study stays: labels never remove one
        return JSONResponse({"image": found.id if found else study.id, "label": study.id, "tag": tag,
                             "label_info": label.as_dict(), "review": refreshed.review, "sr_revised": revised})

    def get_label(request: Request) -> Response:
        study, found = study_or_404(request.query_params.get("label") or request.query_params.get("image"))
        audit_opened(request, study, "label")
        tag = request.query_params.get("tag") or "final"
        label = data.labels.latest(study.study.key, tag, found.sop_instance_uid if found else None)
        if label is None:
            raise _error(404, f"no {tag!r} label")
        name = f"{found.id if found else study.id}_{tag}.json"
        return Response(json.dumps(label.as_dict()), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    def label_info(request: Request) -> Response:
        study, found = study_or_404(request.query_params.get("label") or request.query_params.get("image"))
        uid = found.sop_instance_uid if found else None
        history = [label.as_dict() for label in data.history(study) if label.sop_instance_uid == uid]
        tag = request.query_params.get("tag")
        return JSONResponse({"id": found.id if found else study.id, "review": study.review,
                             "labels": [h for h in history if not tag or h["tag"] == tag]})

    routes = [
        *auth_routes(auth),
        *admin_routes(AccountAdmin(accounts, sessions, audit)),
        Route("/health", health),
        Route("/", page),
        Route("/info/", info),
        Route("/infer/{model}", infer, methods=["POST"]),
        Route("/activelearning/{strategy}", activelearning, methods=["GET", "POST"]),
        Route("/datastore/", datastore, methods=["GET"]),
        Route("/datastore/", upload, methods=["PUT"]),
        Route("/datastore/studies", studies),
        Route("/datastore/study", study_detail),
        Route("/datastore/image", image),
        Route("/datastore/image/info", image_info),
        Route("/datastore/heatmap", heatmap),
        Route("/datastore/label", save_label, methods=["PUT"]),
        Route("/datastore/label", get_label, methods=["GET"]),
        Route("/datastore/label/info", label_info),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        sessions.purge()  # rows of sessions that stopped working more than a day ago
        yield
        data.close()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # registered for HTTPException only
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    # outermost first: every answer gets the headers, no body passes its limit, then who is asking
    middleware = [Middleware(SecurityHeaders, tls=https),
                  Middleware(BodyLimit, default_bytes=MIB,
                             limits={("PUT", "/datastore/"): int(settings.max_upload_mb * MIB)})]
    if settings.oidc is not None:
        from listener.review.oidc import OidcSignOn

        sign_on = OidcSignOn(settings.oidc, settings.public_url, https=https)
        middleware += sign_on.middleware()
        routes[:0] = sign_on.routes(auth.oidc_signed_in, auth.oidc_refused)
    middleware.append(Middleware(AuthMiddleware, auth=auth))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                    exception_handlers={HTTPException: http_error})
    app.state.datastore = data
    app.state.auth = auth
    return app


def _revise(config: ListenerConfig, data: ReviewDatastore, study: ReviewStudy, finding: str, reviewer: str | None) -> bool:
    """A new SR version when the reviewer's finding differs from what the PACS was last sent."""
    from listener.review.revision import needs_revision, write_revision

    current = data.store.study(study.study.key)
    if current is None or not needs_revision(current, finding):
        return False
    write_revision(config, data.store, current, finding, reviewer)
    return True


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mura-monai")
    except PackageNotFoundError:
        return "unknown"
