"""`Gateway`: the ingress deployment behind Serve's gRPC proxy.

Per request: validate, reserve the price with the control plane (which also
authenticates the caller's key), run the model, then store the images and commit the
charge in one control-plane transaction. Any failure or cancellation releases the
reservation, so a request is charged exactly its price or nothing.

An edit stores its fitted init image as an upload after the reservation and before the
model runs, in its own (free) control-plane call: the generated images' parameters name
the upload's content id, which exists only once it is stored, and the generated images
still go in with the charge in one transaction. A failed edit therefore leaves no
generated content and no charge; its upload stays until the retention sweep deletes it
with every upload (24 hours by default), as any upload of the account would.

With an `idempotency_key`, the reservation carries it: a retry of a request that already
succeeded gets a replay from the control plane (the committed reservation and its content
ids), and the gateway rebuilds the response from the stored images (GetContent) without
running the model or charging again. Refusals of the control plane (rate limits, the bound on
generations in flight, a key in flight) reach the caller with their code, message and rich
details (ErrorInfo, RetryInfo) unchanged.

A model whose pool has no running replica (all crashed, being restarted or replaced) is refused at
once with UNAVAILABLE and ErrorInfo `POOL_UNAVAILABLE` before anything is reserved, and the health
check answers NOT_SERVING for the model's name (and for "" while no pool has a replica); a pool
allowed to scale to zero is exempt, since a request is what scales it up.

Each pool admits only what its running replicas can serve within about two batch cycles
(`inference.admission`): past that a request is refused at once with UNAVAILABLE `POOL_AT_CAPACITY` and
a RetryInfo, before anything is reserved, so an overload keeps the admitted requests' latency and the
pool's goodput instead of queueing everyone past their deadlines.

The caller's deadline reaches the gateway from the proxy (`inference.deadline`): control-plane calls
are bounded by what is left of it, the model replica drops the request if it passes before its batch
starts, and a request abandoned at its deadline is counted as DEADLINE_EXCEEDED, not CANCELLED.

A model replica that dies mid-generation (killed, out of memory, node lost) fails the request
with UNAVAILABLE and ErrorInfo `REPLICA_FAILED`, not INTERNAL: nothing was charged, Serve
restarts the replica, and the caller retries with backoff. The gateway does not retry by itself:
a request that crashed one replica could crash the next, and the caller's deadline is the
caller's to spend.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from inference.admission import PoolAdmission, admission_limit
from inference.config import ModelConfig, PoolConfig, ServeConfig
from inference.control_plane_client import ControlPlaneClient
from inference.deadline import came_directly, deadline_of, has_expired
from inference.errors import STATUS_DETAILS_KEY, RequestError
from inference.generation import IMAGE_TO_IMAGE, INPAINT, TEXT_TO_IMAGE, GenerationResult, StepProgress
from inference.metrics import STAGES, GatewayMetrics
from inference.pool_health import PoolReplicaWatch
from inference.validation import ValidatedRequest, validate_generate_request
from protos.atelier.v1 import common_pb2, control_plane_pb2, inference_pb2
from transport.call_metadata import ACTING_ACCOUNT, USER_TOKEN, CallerCredentials, first_value

logger = logging.getLogger(__name__)

_SERVICE_NAME = "atelier.v1.Inference"
# ErrorInfo reason of a prompt the control plane's moderation refused.
_PROMPT_BLOCKED = "PROMPT_BLOCKED"
# ErrorInfo reason of generated images the control plane withheld on the output classifier's verdict.
_OUTPUT_BLOCKED = "OUTPUT_BLOCKED"
# ErrorInfo reasons of the gateway's own refusals (listed in common.proto's ErrorReason).
_POOL_AT_CAPACITY = "POOL_AT_CAPACITY"
_POOL_UNAVAILABLE = "POOL_UNAVAILABLE"
_REPLICA_FAILED = "REPLICA_FAILED"
# How long a caller should wait before retrying a pool without replicas: about a replica's restart.
_POOL_RETRY_AFTER_S = 5
IN_FLIGHT_REFRESH_S = 5.0
"""How often the in-flight gauges are set again, well within Ray's metric export interval (10 s)."""

ProgressSink = Callable[[StepProgress], Awaitable[None]]


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
class Gateway:
    """Implements `atelier.v1.Inference` (and the standard health check) for Serve's gRPC proxy."""

    def __init__(self, config: ServeConfig, pools: dict[str, DeploymentHandle]) -> None:
        self._config = config
        self._pools = pools
        self._control_plane = ControlPlaneClient(config.control_plane_address, config.control_plane_timeout_s)
        self._replicas = PoolReplicaWatch(
            serve.status,
            serve.get_replica_context().app_name,
            {name: handle.deployment_name for name, handle in pools.items()},
        )
        self._metrics = GatewayMetrics()
        self._admission = PoolAdmission()
        self._in_flight: Counter[str] = Counter()
        self._in_flight_refresh: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        """Tasks that outlive their request (the event loop keeps only weak references)."""

    async def Generate(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> inference_pb2.GenerateResponse:
        request_id = _request_id(grpc_context)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await self._generate(request, grpc_context, request_id, on_progress=None)
        except RequestError as exc:
            code = exc.code
            self._count_refusal(request, exc)
            _set_error(grpc_context, exc, request_id)
            return inference_pb2.GenerateResponse()
        except asyncio.CancelledError:
            code = _abandoned_code(grpc_context)
            raise
        except Exception:
            logger.exception("generate_failed request_id=%s", request_id)
            code = grpc.StatusCode.INTERNAL
            _set_error(grpc_context, _internal(request_id), request_id)
            return inference_pb2.GenerateResponse()
        finally:
            self._count_request(request, "Generate", code, started)

    async def GenerateStream(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.GenerateRequest, grpc_context: RayServegRPCContext
    ) -> AsyncIterator[inference_pb2.GenerateStreamResponse]:
        """Progress messages, then the result.

        A failed stream sets its code, message and trailers (request id, rich details) on the context.
        Through Serve's proxy it then raises (the proxy applies a stream's status only then, and the
        proxy patch restores the trailers); on direct ingress it ends instead, since the replica's
        server applies what the method set on the context only to a stream that ends without raising.
        """
        request_id = _request_id(grpc_context)
        started = time.perf_counter()
        progress: asyncio.Queue[StepProgress | None] = asyncio.Queue()
        task = asyncio.ensure_future(self._generate(request, grpc_context, request_id, on_progress=progress.put))
        task.add_done_callback(lambda _: progress.put_nowait(None))
        code = grpc.StatusCode.OK
        try:
            while (step := await progress.get()) is not None:
                yield inference_pb2.GenerateStreamResponse(
                    progress=inference_pb2.GenerationProgress(
                        step=step.step,
                        total_steps=step.total_steps,
                        elapsed_ms=step.elapsed_ms,
                        preview_png=step.preview_png or b"",
                    )
                )
            result = task.result()
        except RequestError as exc:
            code = exc.code
            self._count_refusal(request, exc)
            _set_error(grpc_context, exc, request_id)
            if came_directly(grpc_context.invocation_metadata()):
                return
            raise exc from None  # through the proxy a stream's status is only applied when the method raises
        except (asyncio.CancelledError, GeneratorExit):
            code = _abandoned_code(grpc_context)
            raise
        except Exception:
            logger.exception("generate_stream_failed request_id=%s", request_id)
            code = grpc.StatusCode.INTERNAL
            error = _internal(request_id)
            _set_error(grpc_context, error, request_id)
            if came_directly(grpc_context.invocation_metadata()):
                return
            raise error from None
        finally:
            # The caller went away: cancelling the task stops the model and releases the credits.
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            self._count_request(request, "GenerateStream", code, started)
        yield inference_pb2.GenerateStreamResponse(result=result)

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: inference_pb2.ListModelsRequest, grpc_context: RayServegRPCContext
    ) -> inference_pb2.ListModelsResponse:
        default = self._config.default_model.name
        return inference_pb2.ListModelsResponse(
            models=[_model_info(m, m.name == default, self._config.pool_of(m).name) for m in self._config.models]
        )

    async def Check(  # noqa: N802 - grpc.health.v1.Health method name
        self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext
    ) -> health_pb2.HealthCheckResponse:
        """SERVING for "" and `atelier.v1.Inference` while some pool can serve, for a model's name
        while its pool can (see `_pool_can_serve`); NOT_SERVING otherwise."""
        if request.service in ("", _SERVICE_NAME):
            serving = any(self._pool_can_serve(pool) for pool, _ in self._config.model_pools())
        elif (model := self._config.model(request.service)) is not None:
            serving = self._pool_can_serve(self._config.pool_of(model))
        else:
            grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
            grpc_context.set_details(f"unknown service {request.service!r}: name a served model or {_SERVICE_NAME}")
            return health_pb2.HealthCheckResponse()
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)

    def _pool_can_serve(self, pool: PoolConfig) -> bool:
        """False only when Serve reports no running replica of a pool that should have one."""
        return pool.may_scale_to_zero or self._replicas.running(pool.name) != 0

    def _require_running_pool(self, model: ModelConfig) -> None:
        if not self._pool_can_serve(self._config.pool_of(model)):
            raise RequestError.retry_later(
                grpc.StatusCode.UNAVAILABLE,
                f"model {model.name!r} has no running replica right now (Serve is restarting it); "
                "nothing was charged, retry with backoff",
                _POOL_UNAVAILABLE,
                retry_after_s=_POOL_RETRY_AFTER_S,
            )

    def _require_pool_room(self, model: ModelConfig) -> None:
        """POOL_AT_CAPACITY at once, before anything is reserved, when the model's pool holds all it
        can serve in time (see `inference.admission`)."""
        pool = self._config.pool_of(model)
        # The models of a pool agree on every replica setting (ServeConfig checks): any one will do.
        if not self._admission.has_room(pool.name, admission_limit(model, self._replicas.running(pool.name))):
            raise _at_capacity(model)

    async def _generate(
        self,
        request: inference_pb2.GenerateRequest,
        grpc_context: RayServegRPCContext,
        request_id: str,
        on_progress: ProgressSink | None,
    ) -> inference_pb2.GenerateResponse:
        started = time.perf_counter()
        caller = _credentials(grpc_context)
        deadline = deadline_of(grpc_context.invocation_metadata())
        validated = await _validate(request, self._config)
        self._require_running_pool(validated.model)
        self._require_pool_room(validated.model)
        params = validated.params
        purpose = _purpose(validated)
        model = validated.model.name
        idempotency = (
            control_plane_pb2.IdempotencyKey(
                key=validated.idempotency_key, request_fingerprint=validated.request_fingerprint
            )
            if validated.idempotency_key is not None
            else None
        )
        try:
            reservation = await self._reserve(
                caller,
                self._control_plane.reserve_credits(
                    caller,
                    validated.account_id,
                    validated.cost,
                    self._config.reservation_ttl_s,
                    purpose,
                    params.prompt,
                    idempotency,
                    deadline,
                ),
            )
        except RequestError as exc:
            if _is_reason(exc, _PROMPT_BLOCKED) and (info := exc.error_info()) is not None:
                category = info.metadata.get("category", "unknown")
                self._metrics.moderation_blocks.inc(tags={"category": category})
            raise
        if reservation.replayed:
            return await self._replay(caller, reservation, request_id, started, deadline)
        reservation_id = reservation.reservation.reservation_id
        reserved = time.perf_counter()
        self._metrics.credits.inc(validated.cost, tags={"model": model, "outcome": "reserved"})
        self._track_in_flight(model, +1)
        # Counted from the reservation, so requests the control plane refuses (credits, rate limits)
        # never take the pool's room; left once the model answered, so storing overlaps the next run.
        slot = self._admission.enter(self._config.pool_of(validated.model).name)
        try:
            upload_id = await self._store_upload(caller, validated, deadline)
            try:
                result = await self._run_model(validated, on_progress, deadline)
            finally:
                slot.leave()
            generated = time.perf_counter()
            stored = await self._control_plane.store_and_commit(
                caller,
                validated.account_id,
                reservation_id,
                result.pngs,
                params.prompt,
                _parameters(validated, result, upload_id),
                request.visibility,
                result.verdicts,
                watermark=validated.model.watermark,
                model_version=validated.model.version,
                deadline=deadline,
            )
        except BaseException as exc:
            # A withheld output's reservation was released by the control plane, with the flag it left.
            if not _is_reason(exc, _OUTPUT_BLOCKED):
                # Shielded so a cancelled request still returns its credits.
                await asyncio.shield(self._control_plane.release_reservation(caller, reservation_id))
            self._metrics.credits.inc(validated.cost, tags={"model": model, "outcome": "released"})
            raise
        finally:
            # Left as soon as the model answered (above); here for a request that failed before it ran
            # (its upload could not be stored): a slot never left would shrink the pool's room for good.
            slot.leave()
            self._track_in_flight(model, -1)
        finished = time.perf_counter()
        self._metrics.credits.inc(validated.cost, tags={"model": model, "outcome": "committed"})
        self._metrics.images.inc(params.num_images, tags={"model": model})
        logger.info(
            "generated request_id=%s model=%s images=%d steps=%d cost=%d scan_ms=%.1f total_ms=%.1f",
            request_id,
            validated.model.name,
            params.num_images,
            params.steps,
            validated.cost,
            result.scan_ms,
            (finished - started) * 1000,
        )
        response = _response(validated, result, stored, request_id, started, reserved, generated, finished)
        response.upload_content_id = upload_id
        timings = response.timings
        self._metrics.observe_stages(model, {stage: getattr(timings, f"{stage}_ms") / 1000 for stage in STAGES})
        return response

    async def _reserve(
        self, caller: CallerCredentials, reserving: Coroutine[Any, Any, control_plane_pb2.ReserveCreditsResponse]
    ) -> control_plane_pb2.ReserveCreditsResponse:
        """Awaits a reservation; should the caller go away meanwhile, the hold is given back once made.

        Cancelling the RPC itself would not undo a reservation the control plane already
        committed, and its id would never arrive: the credits would stay held until the TTL.
        """
        pending = asyncio.ensure_future(reserving)
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            self._keep(pending)
            pending.add_done_callback(lambda done: self._release_orphan(caller, done))
            raise

    def _release_orphan(
        self, caller: CallerCredentials, done: asyncio.Future[control_plane_pb2.ReserveCreditsResponse]
    ) -> None:
        if done.cancelled() or done.exception() is not None or done.result().replayed:
            return
        self._keep(
            asyncio.ensure_future(
                self._control_plane.release_reservation(caller, done.result().reservation.reservation_id)
            )
        )

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _store_upload(
        self, caller: CallerCredentials, validated: ValidatedRequest, deadline: float | None
    ) -> str:
        """Stores an edit's fitted init image as an upload of the account; "" for text-to-image."""
        edit = validated.params.edit
        if edit is None:
            return ""
        return await self._control_plane.store_upload(caller, validated.account_id, edit.init_png, deadline)

    async def _replay(
        self,
        caller: CallerCredentials,
        reservation: control_plane_pb2.ReserveCreditsResponse,
        request_id: str,
        started: float,
        deadline: float | None,
    ) -> inference_pb2.GenerateResponse:
        """Rebuilds the response of an idempotent request that already succeeded, from the
        content its reservation paid for; nothing is generated or charged."""
        reserved = time.perf_counter()
        gone = RequestError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "the images of this idempotency_key's request were deleted: send the request with a new key",
        )
        if not reservation.replayed_content_ids:
            raise gone
        try:
            fetched = await asyncio.gather(
                *(self._control_plane.get_content(caller, cid, deadline) for cid in reservation.replayed_content_ids)
            )
        except RequestError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise gone from None
            raise
        fetched.sort(key=lambda item: item.content.parameters.seed)
        finished = time.perf_counter()
        logger.info(
            "replayed request_id=%s reservation_id=%s images=%d",
            request_id,
            reservation.reservation.reservation_id,
            len(fetched),
        )
        return inference_pb2.GenerateResponse(
            images=[
                inference_pb2.GeneratedImage(
                    content_id=item.content.content_id,
                    png=item.data,
                    seed=item.content.parameters.seed,
                    sha256=item.content.sha256,
                )
                for item in fetched
            ],
            parameters=fetched[0].content.parameters,
            credits_charged=reservation.reservation.amount,
            credits_available=reservation.balance.available,
            timings=inference_pb2.StageTimings(
                reserve_ms=(reserved - started) * 1000,
                store_ms=(finished - reserved) * 1000,
                total_ms=(finished - started) * 1000,
            ),
            request_id=request_id,
            upload_content_id=fetched[0].content.parameters.source_content_id,
            replayed=True,
        )

    def _track_in_flight(self, model: str, delta: int) -> None:
        self._in_flight[model] += delta
        self._metrics.in_flight.set(self._in_flight[model], tags={"model": model})
        if self._in_flight_refresh is None:
            self._in_flight_refresh = asyncio.get_running_loop().create_task(self._refresh_in_flight_forever())

    async def _refresh_in_flight_forever(self) -> None:
        """Sets every model's in-flight gauge again every IN_FLIGHT_REFRESH_S: Ray stops exporting a
        gauge not set within two export intervals, so a quiet model's 0 would vanish from /metrics."""
        while True:
            await asyncio.sleep(IN_FLIGHT_REFRESH_S)
            for model in self._config.models:
                self._metrics.in_flight.set(self._in_flight[model.name], tags={"model": model.name})

    def _count_request(
        self, request: inference_pb2.GenerateRequest, method: str, code: grpc.StatusCode, started: float
    ) -> None:
        label = self._model_label(request)
        self._metrics.requests.inc(tags={"model": label, "method": method, "code": code.name})
        if code != grpc.StatusCode.OK:
            # A failed request has no stages, but its caller waited too: a slow failure must show on the
            # latency panels (a success recorded its stages in _generate).
            self._metrics.observe_stages(label, {"total": time.perf_counter() - started}, code=code.name)

    def _count_refusal(self, request: inference_pb2.GenerateRequest, error: RequestError) -> None:
        info = error.error_info()
        reason = info.reason if info is not None else ""
        self._metrics.count_refusal(self._model_label(request), error.code.name, reason)

    def _model_label(self, request: inference_pb2.GenerateRequest) -> str:
        # Only served model names become label values: arbitrary strings would explode cardinality.
        model = self._config.model(request.model) if request.model else self._config.default_model
        return model.name if model is not None else "unknown"

    async def _run_model(
        self, validated: ValidatedRequest, on_progress: ProgressSink | None, deadline: float | None
    ) -> GenerationResult:
        try:
            return await self._call_pool(validated, on_progress, deadline)
        except BackPressureError:
            # The pool's queue is full (ModelConfig.max_queued_requests): failing fast lets the caller back
            # off, where queueing would only let its deadline pass.
            raise _at_capacity(validated.model) from None
        except RayActorError as exc:  # ActorDiedError, ActorUnavailableError
            logger.warning("model_replica_lost model=%s error=%s", validated.model.name, type(exc).__name__)
            raise RequestError.retry_later(
                grpc.StatusCode.UNAVAILABLE,
                "the model replica stopped during the generation; nothing was charged: retry with backoff",
                _REPLICA_FAILED,
                retry_after_s=1,
            ) from None

    async def _call_pool(
        self, validated: ValidatedRequest, on_progress: ProgressSink | None, deadline: float | None
    ) -> GenerationResult:
        model = validated.model
        pool = self._config.pool_of(model)
        handle = self._pools[pool.name]
        if len(pool.models) > 1:
            # Serve routes the request to a replica of the pool that has this model loaded, if any.
            handle = handle.options(multiplexed_model_id=model.name)
        if on_progress is None:
            response = handle.generate.remote(validated.params, deadline=deadline)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise
        stream = handle.options(stream=True).generate_stream.remote(
            validated.params, validated.preview_every, deadline=deadline
        )
        if not isinstance(stream, DeploymentResponseGenerator):  # narrows the union for type checkers
            raise TypeError("streaming handle returned a unary response")
        try:
            async for event in stream:
                if isinstance(event, GenerationResult):
                    return event
                await on_progress(event)
        except asyncio.CancelledError:
            stream.cancel()
            raise
        raise RuntimeError("model stream ended without a result")


async def _validate(request: inference_pb2.GenerateRequest, config: ServeConfig) -> ValidatedRequest:
    # Decoding an edit's images takes up to a few hundred milliseconds: off the event loop, so other
    # requests' streams keep flowing meanwhile.
    if request.init_image or request.mask_image:
        return await asyncio.to_thread(validate_generate_request, request, config)
    return validate_generate_request(request, config)


def _is_reason(exc: BaseException, reason: str) -> bool:
    """Whether `exc` is a refusal with ErrorInfo `reason`."""
    return isinstance(exc, RequestError) and (info := exc.error_info()) is not None and info.reason == reason


def _at_capacity(model: ModelConfig) -> RequestError:
    return RequestError.retry_later(
        grpc.StatusCode.UNAVAILABLE,
        f"model {model.name!r} is at capacity; nothing was charged, retry with backoff",
        _POOL_AT_CAPACITY,
        retry_after_s=1,
    )


def _abandoned_code(grpc_context: RayServegRPCContext) -> grpc.StatusCode:
    """What a request the caller abandoned counts as: DEADLINE_EXCEEDED when its deadline had passed."""
    if has_expired(deadline_of(grpc_context.invocation_metadata())):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _purpose(validated: ValidatedRequest) -> str:
    """The reservation's purpose, which the ledger keeps as the charge's reason."""
    params = validated.params
    size = f"{params.width}x{params.height}x{params.denoising_steps}"
    edit = f" {params.mode} strength={params.edit.strength:g}" if params.edit is not None else ""
    return f"generate {validated.model.name} {size} n={params.num_images}{edit}"


def _request_id(grpc_context: RayServegRPCContext) -> str:
    for key, value in grpc_context.invocation_metadata():
        if key == "request_id" and value:
            return str(value)[:64]
    return uuid.uuid4().hex


def _credentials(grpc_context: RayServegRPCContext) -> CallerCredentials:
    """The caller's API key, and the end user it acts for, as the control plane must see them."""
    metadata = grpc_context.invocation_metadata()
    for key, value in metadata:
        if key == "authorization":
            scheme, _, secret = str(value).partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return CallerCredentials(
                    api_key=secret.strip(),
                    acting_account=first_value(metadata, ACTING_ACCOUNT),
                    user_token=first_value(metadata, USER_TOKEN),
                )
    raise RequestError(grpc.StatusCode.UNAUTHENTICATED, "missing API key: send metadata 'authorization: Bearer <key>'")


def _internal(request_id: str) -> RequestError:
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error; quote request id {request_id}")


def _set_error(grpc_context: RayServegRPCContext, error: RequestError, request_id: str) -> None:
    grpc_context.set_code(error.code)
    grpc_context.set_details(error.message)
    trailing = [("request_id", request_id)]
    if error.details is not None:
        trailing.append((STATUS_DETAILS_KEY, error.details))  # type: ignore[arg-type]
    grpc_context.set_trailing_metadata(trailing)


_MODES = {
    TEXT_TO_IMAGE: common_pb2.GENERATION_MODE_TEXT_TO_IMAGE,
    IMAGE_TO_IMAGE: common_pb2.GENERATION_MODE_IMAGE_TO_IMAGE,
    INPAINT: common_pb2.GENERATION_MODE_INPAINT,
}


def _parameters(
    validated: ValidatedRequest, result: GenerationResult, upload_id: str
) -> list[common_pb2.GenerationParameters]:
    params = validated.params
    return [
        common_pb2.GenerationParameters(
            model=validated.model.name,
            width=params.width,
            height=params.height,
            steps=params.steps,
            guidance_scale=params.guidance_scale,
            seed=params.seed + index,
            scheduler=result.scheduler,
            backend=result.backend,
            mode=_MODES[params.mode],
            source_content_id=upload_id,
            strength=params.edit.strength if params.edit is not None else None,
        )
        for index in range(params.num_images)
    ]


def _response(
    validated: ValidatedRequest,
    result: GenerationResult,
    stored: control_plane_pb2.StoreContentResponse,
    request_id: str,
    started: float,
    reserved: float,
    generated: float,
    finished: float,
) -> inference_pb2.GenerateResponse:
    # The control plane returns the files it stored where it changed them (watermark, signed C2PA
    # manifest): the caller gets exactly the stored file, whose hash `sha256` is.
    pngs = (
        [marked or png for png, marked in zip(result.pngs, stored.stored_data, strict=True)]
        if stored.stored_data
        else result.pngs
    )
    images = [
        inference_pb2.GeneratedImage(
            content_id=content.content_id,
            png=png,
            seed=validated.params.seed + index,
            sha256=content.sha256,  # hashed by the control plane as it stored the bytes
        )
        for index, (png, content) in enumerate(zip(pngs, stored.contents, strict=True))
    ]
    model_ms = (generated - reserved) * 1000
    timings = inference_pb2.StageTimings(
        reserve_ms=(reserved - started) * 1000,
        queue_ms=max(0.0, model_ms - result.denoise_ms - result.decode_ms - result.scan_ms),
        denoise_ms=result.denoise_ms,
        decode_ms=result.decode_ms,
        scan_ms=result.scan_ms,
        store_ms=(finished - generated) * 1000,
        total_ms=(finished - started) * 1000,
    )
    return inference_pb2.GenerateResponse(
        images=images,
        parameters=stored.contents[0].parameters,
        credits_charged=validated.cost,
        credits_available=stored.balance.available,
        timings=timings,
        request_id=request_id,
    )


def _model_info(model: ModelConfig, is_default: bool, pool: str) -> inference_pb2.ModelInfo:
    return inference_pb2.ModelInfo(
        name=model.name,
        backend=model.backend,
        is_default=is_default,
        default_width=model.default_width,
        default_height=model.default_height,
        min_size=model.min_size,
        max_size=model.max_size,
        default_steps=model.default_steps,
        max_steps=model.max_steps,
        default_guidance_scale=model.default_guidance_scale,
        millicredits_per_step=model.millicredits_per_step,
        description=model.description,
        pool=pool,
        supports_editing=model.supports_editing,
        fast_batch_sizes=model.bucket_batch_sizes,
        fast_sizes=model.bucket_sizes,
    )
