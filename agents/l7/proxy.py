"""The L7 proxy core the waypoint and the sidecars run: HTTP/1.1 in, route, authorize, retry, HTTP/1.1 out.

Theory of operation
-------------------
`L7Proxy.serve(reader, writer, downstream)` serves one client connection, one request at a
time (pipelined requests wait in the parser's buffer). Per request, in Envoy's filter order:

1. parse the head (bad input: the parser's status, 400/413/431/501/505, flag DPE, close);
2. L7 authorization if `config.authz_target(downstream)` names a target (deny: 403
   "RBAC: access denied", flag RBAC);
3. route selection (`select_route`; `route=False` for a sidecar's inbound side: every request
   goes to the one local endpoint, no retries), then faults: `extra_fault` (the lab's live
   faults) and the route's own, each a delay (DI) then an abort (FI); no route: 404 NR;
4. the cluster (`cluster_policy`; a subset no DestinationRule defines: 503 NC), its endpoints
   filtered by subset labels and outlier ejections, one picked (none: 503 UH);
5. a connection from the cluster's pool (`agents.l7.upstream`; circuit breaker: 503 UO), the
   request sent with `x-forwarded-proto`, `x-request-id`, `x-envoy-attempt-count` and the
   route's header changes; the response head read within the route timeout and perTryTimeout;
6. retries by the route's `RetryPolicy` (another host when there is one, backoff between
   tries, maxRetries in flight per cluster); a try on a reused connection that the upstream
   closed before answering is sent again on a fresh one without counting as a retry;
7. the response streamed back with the route's response header changes, and one
   `RequestRecord` to `L7Telemetry` (metrics and the access log line).

Request bodies up to `buffer_limit` bytes are read before the first try so a retry can send
them again; a longer body is streamed to the first try and is never retried.

The Connector contract: `connect(endpoint, service, downstream)` opens a NEW connection to one
endpoint (the endpoint dict from `L7Config.endpoints`, the destination service key
`name.namespace`, the downstream it is for) and returns asyncio streams that carry plain
HTTP/1.1; it raises `UpstreamConnectError(flag, reason)` or `OSError`. The waypoint's opens
an HBONE tunnel, the sidecar's inbound side a TCP connection to its application.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agents.l7.authz import DENIED_BODY, DENIED_STATUS, AuthzRequest, PolicyTarget, authorize, compile_policies, \
    normalize_path
from agents.l7.cluster import ClusterPolicy, Endpoint, LoadBalancerState, cluster_policy, endpoint_key, \
    pick_endpoint, select_endpoints
from agents.l7.exchange import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, DownstreamStream, RequestBody, UpstreamReset, \
    relay_body, response_head, send_request
from agents.l7.http1 import Parser, ProtocolError, RequestHead, ResponseHead, \
    serialize_response_head
from agents.l7.http1_serialize import connection_scoped, serialize_request_head, without_hop_by_hop
from agents.l7.retry import NO_RETRY
from agents.l7.routing import Fault, HeaderMutation, RequestInfo, RouteDecision, RouteTables, select_route
from agents.l7.telemetry import L7Telemetry, RequestRecord, peer_of_endpoint
from agents.l7.upstream import OVERFLOW_BODY, Cluster, Connector, Overflow, UpstreamConnectError
from agents.ztunnel.telemetry import UNKNOWN, Peer

__all__ = ["Connector", "Downstream", "L7Config", "L7Proxy", "UpstreamConnectError"]

BUFFER_LIMIT = 64 * 1024
RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. "
NO_HEALTHY_UPSTREAM = "no healthy upstream"
TIMEOUT_BODY = "upstream request timeout"
FAULT_ABORT_BODY = "fault filter abort"
_UUID4_CLEAR = ~((0xf000 << 64) | (0xc000 << 48))  # the version and variant bits of a UUID ...
_UUID4_SET = (4 << 76) | (0x8000 << 48)  # ... set to version 4, variant RFC 4122
_DROP_ALWAYS = frozenset({b"host", b"expect", b"x-request-id", b"x-envoy-attempt-count"})


@dataclass(frozen=True)
class Downstream:
    """One downstream connection: who sent it and what it was addressed to."""

    service: str  # destination service key "name.namespace" (route-table key), "" if unknown
    port: int  # the service port the client addressed
    source: Peer  # the client workload (Peer() if unknown)
    source_principal: str | None  # verified SPIFFE id of the peer, None for plaintext
    source_address: str  # "ip:port" of the client
    security: str  # connection_security_policy label: "mutual_tls" or "none"
    destination: Peer | None = None  # sidecar inbound: the local workload


class L7Config(Protocol):
    """What the engine reads from the proxy's current config. A config object is a snapshot that does not
    change: what the engine derives from one (compiled policies, cluster policies, endpoints) is kept until
    `config()` returns another object."""

    routes: RouteTables
    destination_rules: Mapping[str, Mapping[str, Any]]
    policies: Sequence[Mapping[str, Any]]

    def authz_target(self, downstream: Downstream) -> PolicyTarget | None: ...

    def endpoints(self, service: str, port: int) -> list[Endpoint]: ...

    def service_hostname(self, service: str) -> str: ...


class _Reply(Exception):
    """Answer the request locally: status, body, response flag, and why (for the access log)."""

    def __init__(self, status: int, body: str, flag: str | None = None, detail: str | None = None) -> None:
        super().__init__(detail or body)
        self.status, self.body, self.flag, self.detail = status, body, flag, detail


class _Closed(Exception):
    """The client connection cannot carry another request (a response was cut, or the client went away)."""


class _ConfigView:
    """What is derived once per config object: compiled policies, cluster policies, the endpoints of a
    cluster and the metric labels of each endpoint (a config object is a snapshot: it does not change)."""

    def __init__(self, config: L7Config) -> None:
        self.config = config
        self.policies = compile_policies(config.policies)
        self.clusters: dict[tuple[str, str | None], ClusterPolicy | None] = {}
        self._endpoints: dict[tuple[str, int, tuple[tuple[str, str], ...] | None, bool], list[Endpoint]] = {}
        self._peers: dict[int, tuple[Endpoint, Peer]] = {}  # by id(endpoint); the endpoint is kept, so is its id

    def endpoints(self, service: str, port: int, labels: Mapping[str, str] | None, first_only: bool) -> list[Endpoint]:
        """The endpoints of `service` on `port` a subset's labels select (only the first: a sidecar's inbound)."""
        key = (service, port, tuple(sorted(labels.items())) if labels else None, first_only)
        found = self._endpoints.get(key)
        if found is None:
            found = select_endpoints(self.config.endpoints(service, port), labels)
            found = self._endpoints[key] = found[:1] if first_only else found
        return found

    def peer(self, endpoint: Endpoint) -> Peer:
        """What the metric labels say about `endpoint`."""
        found = self._peers.get(id(endpoint))
        if found is None or found[0] is not endpoint:
            found = self._peers[id(endpoint)] = (endpoint, peer_of_endpoint(endpoint))
        return found[1]

    def cluster_policy(self, service: str, subset: str | None) -> ClusterPolicy | None:
        key = (service, subset)
        try:
            return self.clusters[key]
        except KeyError:
            policy = self.clusters[key] = cluster_policy(self.config.destination_rules, service, subset)
            return policy


class L7Proxy:
    """The engine of one L7 proxy process; one `serve` call per downstream connection."""

    def __init__(self, config: Callable[[], L7Config | None], connect: Connector, telemetry: L7Telemetry,
                 reporter: str, *, route: bool = True, rng: random.Random | None = None,
                 extra_fault: Callable[[RequestInfo, Downstream], Fault | None] | None = None,
                 buffer_limit: int = BUFFER_LIMIT, max_request_body: int | None = None,
                 max_header_bytes: int = 60 * 1024) -> None:
        self.config = config
        self.connect = connect
        self.telemetry = telemetry
        self.reporter = reporter
        self.route = route
        self.rng = rng or random.Random()
        self.extra_fault = extra_fault
        self.buffer_limit = buffer_limit
        self.max_request_body = max_request_body  # None: no limit (Envoy's default); over it: 413
        self.max_header_bytes = max_header_bytes  # Envoy's default max_request_headers_kb is 60
        self.clusters: dict[str, Cluster] = {}
        self._view: _ConfigView | None = None

    # --- connections --------------------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    downstream: Downstream) -> None:
        """Serve every request on this downstream connection until it closes."""
        parser = Parser("server", max_header_bytes=self.max_header_bytes, max_body_bytes=self.max_request_body)
        stream = DownstreamStream(parser, reader, writer)
        try:
            while True:
                try:
                    event = await stream.next_event()
                except ProtocolError as e:
                    rec = self._record(downstream)
                    await self._reply(stream, None, rec, _Reply(e.status, e.message + "\n", "DPE", e.message), False)
                    return
                if type(event) is not RequestHead:  # ConnectionClosed, or PAUSED
                    return
                if not await self._request(event, stream, downstream):
                    return
        except (_Closed, ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except (OSError, RuntimeError):
                pass

    async def aclose(self) -> None:
        """Close pooled upstream connections (busy ones close when their request ends)."""
        for cluster in self.clusters.values():
            cluster.close_idle()

    def stats(self) -> dict[str, Any]:
        """Pool, circuit breaker and outlier state per cluster, for the admin config dump."""
        return {"clusters": {name: cluster.stats() for name, cluster in sorted(self.clusters.items())}}

    # --- one request --------------------------------------------------------------------------------

    def _record(self, downstream: Downstream) -> RequestRecord:
        return RequestRecord(self.reporter, source=downstream.source, source_principal=downstream.source_principal,
                             source_address=downstream.source_address, security=downstream.security,
                             destination=downstream.destination or Peer())

    def _view_of(self, config: L7Config) -> _ConfigView:
        view = self._view
        if view is None or view.config is not config:
            view = self._view = _ConfigView(config)
        return view

    async def _request(self, head: RequestHead, stream: DownstreamStream, downstream: Downstream) -> bool:
        """Serve one request; whether the connection may carry another."""
        info = RequestInfo.from_head(head, port=downstream.port)
        if not downstream.service and self.route:
            # A listener shared by every service on a port (a sidecar's outbound): the Host names the service.
            service_for = getattr(self.config(), "service_for", None)
            service = service_for(info.authority, downstream.port) if service_for is not None else ""
            if service:
                downstream = dataclasses.replace(downstream, service=service)
        rec = self._record(downstream)
        rec.method, rec.path, rec.authority = info.method, head.target.decode("latin-1"), info.authority
        rec.protocol = "HTTP/1.0" if head.version == b"1.0" else "HTTP/1.1"
        rec.request_id = next((v for n, v in info.headers if n.lower() == "x-request-id"), "") or new_request_id()
        try:
            decision = await self._decide(head, info, downstream, rec)
            return await self._proxy(head, info, decision, stream, downstream, rec)
        except _Reply as reply:
            return await self._reply(stream, head, rec, reply, head.keep_alive)

    async def _decide(self, head: RequestHead, info: RequestInfo, downstream: Downstream,
                      rec: RequestRecord) -> RouteDecision:
        """Authorization, route and faults; raises _Reply for a local answer."""
        config = self.config()
        self._service_labels(rec, downstream.service, config)
        if config is None:
            raise _Reply(503, NO_HEALTHY_UPSTREAM, "NC", "the proxy has no config yet")
        if head.method == b"CONNECT":
            raise _Reply(405, "CONNECT is not supported by this proxy\n", None, "CONNECT refused")
        view = self._view_of(config)
        target = config.authz_target(downstream)
        if target is not None:
            verdict = authorize(view.policies, self._authz_request(info, downstream), target)
            if not verdict.allowed:
                raise _Reply(DENIED_STATUS, DENIED_BODY, "RBAC", verdict.reason)
        if self.route:
            decision = select_route(config.routes.for_service(downstream.service), info, self.rng)
        else:
            decision = RouteDecision(downstream.service, port=downstream.port, path=rec.path,
                                     authority=info.authority, retry=NO_RETRY)
        rec.route_name = decision.route_name
        if self.extra_fault is not None:
            fault = self.extra_fault(info, downstream)
            if fault is not None:
                await self._fault(fault, rec)
        if decision.fault is not None:
            await self._fault(decision.fault, rec)  # an abort among them came back as direct_response FI
        if decision.direct_response is not None:
            flag = decision.response_flag if decision.response_flag in ("NR", "FI") else None
            body = FAULT_ABORT_BODY if flag == "FI" else decision.direct_body
            raise _Reply(decision.direct_response, body, flag, {"NR": "no route matched", "FI": "fault abort"}.get(
                flag or "", "direct response"))
        return decision

    async def _fault(self, fault: Fault, rec: RequestRecord) -> None:
        """A fault's delay (DI), then its abort (FI) as a local reply."""
        if fault.delay:
            rec.flags.append("DI")
            await asyncio.sleep(fault.delay)
        if fault.abort is not None:
            if "FI" not in rec.flags:
                rec.flags.append("FI")
            raise _Reply(fault.abort, FAULT_ABORT_BODY, None, "fault abort")

    def _authz_request(self, info: RequestInfo, downstream: Downstream) -> AuthzRequest:
        source_ip = downstream.source_address.rsplit(":", 1)[0].strip("[]")
        return AuthzRequest(info.method, normalize_path(info.path), info.authority, info.headers,
                            downstream.source_principal, source_ip, dest_port=downstream.port)

    def _service_labels(self, rec: RequestRecord, service: str, config: L7Config | None) -> None:
        """destination_service* labels of the record."""
        if not service:
            return
        name, _, namespace = service.partition(".")
        rec.service_name, rec.service_namespace = name, namespace or UNKNOWN
        rec.service_host = config.service_hostname(service) if config is not None else service

    # --- upstream -----------------------------------------------------------------------------------

    def _cluster(self, name: str, policy: ClusterPolicy) -> Cluster:
        cluster = self.clusters.get(name)
        if cluster is None:
            lb = LoadBalancerState(rng=random.Random(self.rng.random()))
            cluster = self.clusters[name] = Cluster(name, policy, lb)
        else:
            cluster.update(policy)
        return cluster

    async def _proxy(self, head: RequestHead, info: RequestInfo, decision: RouteDecision, stream: DownstreamStream,
                     downstream: Downstream, rec: RequestRecord) -> bool:
        """Send the request upstream (with retries) and relay the response; whether to keep the connection."""
        config = self.config()
        assert config is not None and decision.service is not None
        service = decision.service
        port = decision.port or downstream.port
        self._service_labels(rec, service, config)
        view = self._view_of(config)
        if self.route:
            policy = view.cluster_policy(service, decision.subset)
            if policy is None:
                raise _Reply(503, "", "NC", f"no subset {decision.subset!r} of {service} in any DestinationRule")
            name = f"outbound|{port}|{decision.subset or ''}|{rec.service_host}"
        else:
            policy, name = ClusterPolicy(service), f"inbound|{port}||"
        cluster = self._cluster(name, policy)
        rec.upstream_cluster = name
        endpoints = view.endpoints(service, port, policy.labels, not self.route)
        cluster.set_endpoints(endpoints, time.monotonic())

        expect = any(n.lower() == "expect" and v.lower() == "100-continue" for n, v in info.headers)
        body = RequestBody(stream, expect_continue=expect)
        try:
            await body.buffer(self.buffer_limit)
        except ProtocolError as e:
            raise _Reply(e.status, e.message + "\n", "DPE", e.message) from None
        rec.request_bytes = body.size
        try:
            fields = upstream_headers(head, decision, rec.request_id, downstream.security, rec.service_host)
            request = serialize_request_head(head.method, fields[0][1], fields[1:])[:-2]  # attempt count follows
        except ValueError as e:  # a header change from config with a CR or LF in it
            raise _Reply(500, "invalid request header change in the route\n", None, str(e)) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + decision.timeout if decision.timeout else None
        started = [False]  # whether the response head went to the client
        try:
            if deadline is None:  # no route timeout: no timer to arm and cancel per request
                return await self._tries(head, decision, request, body, cluster, endpoints, service, stream,
                                         downstream, rec, started)
            async with asyncio.timeout_at(deadline):
                return await self._tries(head, decision, request, body, cluster, endpoints, service, stream,
                                         downstream, rec, started)
        except TimeoutError:
            rec.flags.append("UT")
            if started[0]:  # the response is cut: close the client connection
                self.telemetry.record(rec)
                raise _Closed() from None
            raise _Reply(504, TIMEOUT_BODY, None, "route timeout") from None

    async def _tries(self, head: RequestHead, decision: RouteDecision, request: bytes,
                     body: RequestBody, cluster: Cluster, endpoints: list[Endpoint], service: str,
                     stream: DownstreamStream, downstream: Downstream, rec: RequestRecord,
                     started: list[bool]) -> bool:
        """The first try and the retries; relays the response of the last one."""
        retry = decision.retry
        retries_left, tried, retrying = retry.attempts, set[str](), False
        try:
            while True:
                rec.attempts += 1
                endpoint = self._pick(cluster, endpoints, tried)
                if endpoint is None:
                    raise _Reply(503, NO_HEALTHY_UPSTREAM, "UH", f"no healthy endpoint in {cluster.name}")
                key = endpoint_key(endpoint)
                tried.add(key)
                rec.upstream_host = f"{endpoint.get('address')}:{endpoint.get('port', '')}"
                if self.route:
                    rec.destination = self._view.peer(endpoint) if self._view else peer_of_endpoint(endpoint)
                    rec.destination_principal = endpoint.get("identity")
                error: str | None = None
                failure: tuple[int, str | None, str, str] | None = None
                try:
                    per_try = retry.per_try_timeout
                    cluster.lb.started(key)
                    cluster.active += 1
                    try:
                        if per_try is None:
                            conn, response = await self._try(cluster, endpoint, head, request, body, service,
                                                             downstream, rec.attempts)
                        else:
                            async with asyncio.timeout(per_try):
                                conn, response = await self._try(cluster, endpoint, head, request, body, service,
                                                                 downstream, rec.attempts)
                    finally:
                        cluster.active -= 1
                        cluster.lb.finished(key)
                        rec.request_bytes = body.size
                    cluster.record(key, status=response.status)
                    grpc = next((v.decode("latin-1") for n, v in response.headers if n.lower() == b"grpc-status"),
                                None)
                    if retry.should_retry(status=response.status, grpc_status=grpc):
                        if self._may_retry(retries_left, body, cluster):
                            cluster.release(conn, False)  # the answer is dropped: reset that upstream request
                            retries_left -= 1
                            await self._backoff(cluster, retry.attempts - retries_left, retry, retrying)
                            retrying = True
                            continue
                        if retries_left <= 0 and retry.attempts > 0:
                            rec.flags.append("URX")
                except Overflow:
                    raise _Reply(503, OVERFLOW_BODY, "UO", f"circuit breaker of {cluster.name}") from None
                except UpstreamConnectError as e:
                    cluster.record(key, error="connect-failure")
                    error, failure = "connect-failure", (503, f"connection failure, transport failure reason: "
                                                         f"{e.reason}", e.flag, f"connect to {rec.upstream_host} "
                                                         f"failed: {e.reason}")
                except UpstreamReset as e:
                    cluster.record(key, error="reset")
                    error, failure = "reset", (e.status, e.reason, e.flag, e.detail)
                except TimeoutError:
                    if per_try is None:
                        raise  # not ours (the route timeout surfaces as a cancellation, handled by the caller)
                    cluster.record(key, error="timeout")
                    error, failure = "timeout", (504, None, "UT", "per-try timeout")
                if failure is not None:
                    if retry.should_retry(error=error) and self._may_retry(retries_left, body, cluster):
                        retries_left -= 1
                        await self._backoff(cluster, retry.attempts - retries_left, retry, retrying)
                        retrying = True
                        continue
                    status, reason, flag, detail = failure
                    retried = rec.attempts > 1
                    if retried and retry.should_retry(error=error) and flag != "UT":
                        flag += ",URX"
                    text = TIMEOUT_BODY if reason is None else (
                        f"{RESET_BEFORE_HEADERS}{'retried and the latest ' if retried else ''}reset reason: {reason}")
                    raise _Reply(status, text, flag, detail)
                break
        finally:
            if retrying:
                cluster.retries -= 1
        return await self._respond(head, decision, conn, response, cluster, stream, rec, started)

    def _may_retry(self, retries_left: int, body: RequestBody, cluster: Cluster) -> bool:
        """Attempts left, a body that can be sent again, and room under maxRetries."""
        return retries_left > 0 and body.replayable and cluster.policy.pool.admit_retry(cluster.retries)

    async def _backoff(self, cluster: Cluster, retry_number: int, retry: Any, retrying: bool) -> None:
        """Count the retry in flight (once per request) and wait the backoff."""
        if not retrying:
            cluster.retries += 1
        await asyncio.sleep(retry.backoff_delay(retry_number, self.rng))

    def _pick(self, cluster: Cluster, endpoints: list[Endpoint], tried: set[str]) -> Endpoint | None:
        """An endpoint, preferring one not tried yet (Istio's previous-hosts retry predicate)."""
        lb = cluster.policy.load_balancer
        if tried and len(endpoints) > 1:
            fresh = [e for e in endpoints if endpoint_key(e) not in tried]
            chosen = pick_endpoint(fresh, lb, cluster.lb) if fresh else None
            if chosen is not None:
                return chosen
        return pick_endpoint(endpoints, lb, cluster.lb)

    async def _try(self, cluster: Cluster, endpoint: Endpoint, head: RequestHead, request: bytes,
                   body: RequestBody, service: str, downstream: Downstream, attempt: int) -> tuple[Any, ResponseHead]:
        """One try: a connection, the request, the response head; a dead reused connection is replaced."""
        request += b"x-envoy-attempt-count: %d\r\n\r\n" % attempt
        has_body = head.chunked or bool(head.content_length)
        while True:
            conn, reused = await cluster.acquire(endpoint, self.connect, service, downstream)
            try:
                await send_request(conn, request, body if has_body else None, head.chunked, head.method)
                return conn, await response_head(conn)
            except UpstreamReset as e:
                cluster.release(conn, False)
                if not (reused and e.before_response and body.replayable):
                    raise
            except ProtocolError as e:  # the client broke its body while it was streamed
                cluster.release(conn, False)
                raise _Reply(e.status, e.message + "\n", "DPE", e.message) from None
            except BaseException:
                cluster.release(conn, False)
                raise

    async def _respond(self, head: RequestHead, decision: RouteDecision, conn: Any, response: ResponseHead,
                       cluster: Cluster, stream: DownstreamStream, rec: RequestRecord, started: list[bool]) -> bool:
        """Relay the response head and body to the client; whether the client connection stays open."""
        writer = stream.writer
        headers = without_hop_by_hop(response.headers)
        if decision.response_headers.set or decision.response_headers.add or decision.response_headers.remove:
            headers = mutate(headers, decision.response_headers)
        if head.method == b"HEAD" or response.status in (204, 304):
            mode = NO_BODY
        elif response.content_length is not None and not response.chunked:
            mode = LENGTH
        elif head.version == b"1.1":
            mode = CHUNKED
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            mode = UNTIL_CLOSE  # an HTTP/1.0 client: the body ends when the proxy closes
        keep = head.keep_alive and mode != UNTIL_CLOSE
        if not keep:
            headers.append((b"connection", b"close"))
        elif head.version == b"1.0":
            headers.append((b"connection", b"keep-alive"))
        try:
            response_head_bytes = serialize_response_head(response.status, headers, response.reason or None)
        except ValueError as e:  # a response header change from config with a CR or LF in it
            cluster.release(conn, False)
            raise _Reply(500, "invalid response header change in the route\n", None, str(e)) from None
        rec.code = response.status
        reusable = False
        try:
            started[0] = True
            if mode != NO_BODY:  # the head goes out with what the upstream already sent of the body
                rec.response_bytes = await relay_body(conn, writer, mode, response_head_bytes)
            else:
                writer.write(response_head_bytes)
                await writer.drain()
            reusable = response.keep_alive and conn.parser.state == "IDLE"
        except UpstreamReset as e:
            rec.flags.append(e.flag)
            rec.detail = e.detail
            keep = False
        except (ConnectionError, OSError):
            rec.flags.append("DC")
            keep = False
        finally:
            cluster.release(conn, reusable)
        self.telemetry.record(rec)
        if not keep:
            raise _Closed()
        return True

    # --- local replies ------------------------------------------------------------------------------

    async def _reply(self, stream: DownstreamStream, head: RequestHead | None, rec: RequestRecord, reply: _Reply,
                     keep: bool) -> bool:
        """Answer locally (reading what is left of the request body, or closing); whether to keep going."""
        if reply.flag:
            for flag in reply.flag.split(","):
                if flag not in rec.flags:
                    rec.flags.append(flag)
        rec.code, rec.detail = reply.status, reply.detail
        if keep and head is not None and stream.parser.state != "IDLE":
            keep = await self._drain_body(head, stream)
        body = reply.body.encode()
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"text/plain")]
        if not keep:
            headers.append((b"connection", b"close"))
        elif head is not None and head.version == b"1.0":
            headers.append((b"connection", b"keep-alive"))
        rec.response_bytes = len(body) if head is None or head.method != b"HEAD" else 0
        try:
            stream.writer.write(serialize_response_head(reply.status, headers) + (
                body if rec.response_bytes else b""))
            await stream.writer.drain()
        except (ConnectionError, OSError):
            rec.flags.append("DC")
            keep = False
        self.telemetry.record(rec)
        return keep

    async def _drain_body(self, head: RequestHead, stream: DownstreamStream) -> bool:
        """Read and drop the unread body of a locally answered request; False to close instead."""
        if any(n.lower() == b"expect" for n, _ in head.headers):
            return False  # the client waits for 100 Continue: it never gets one, so do not read
        body = RequestBody(stream)
        try:
            return await body.buffer(self.buffer_limit)
        except ProtocolError:
            return False


def new_request_id() -> str:
    """A random (version 4) UUID as text, like `str(uuid.uuid4())` without its object and system call."""
    h = "%032x" % (random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def mutate(headers: list[tuple[bytes, bytes]], change: HeaderMutation) -> list[tuple[bytes, bytes]]:
    """Header changes from config, on bytes header pairs."""
    text = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in change.apply(text)]


def upstream_headers(head: RequestHead, decision: RouteDecision, request_id: str, security: str,
                     service_host: str) -> list[tuple[bytes, bytes]]:
    """The request head's fields as sent upstream; the first pair is (b":path", target), then Host."""
    drop = connection_scoped(head.headers) | _DROP_ALWAYS
    authority = (decision.authority or service_host).encode("latin-1")
    headers: list[tuple[bytes, bytes]] = [(b"host", authority)]
    forwarded_proto = False
    for name, value in head.headers:
        low = name.lower()
        if low in drop:
            continue
        if low == b"x-forwarded-proto":
            forwarded_proto = True
        headers.append((name, value))
    if not forwarded_proto:
        headers.append((b"x-forwarded-proto", b"https" if security == "mutual_tls" else b"http"))
    headers.append((b"x-request-id", request_id.encode("latin-1")))
    change = decision.request_headers
    if change.set or change.add or change.remove:
        headers = mutate(headers, change)
    if head.chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    return [(b":path", decision.path.encode("latin-1"))] + headers
