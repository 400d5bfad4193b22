"""`negseq serve`: its arguments and what it runs (the top-level `negseq` command wires it in)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import TypeVar

import pyarrow as pa

from negseq.errors import NegseqError
from negseq.sampler import build_sampler
from negseq.service.auth import read_token_file
from negseq.service.job import ServiceJob
from negseq.service.server import SamplerServer, check_token_transport, grpc_location, serve_until_signalled
from negseq.service.tls import ServerTls, is_loopback

log = logging.getLogger("negseq.service")


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the sampler as an Arrow Flight service",
        description="Load the job file's sampler tables once and answer sampling requests over "
        "Arrow Flight until SIGTERM (which drains in-flight requests, then exits 0).",
    )
    p.add_argument("--config", required=True, help="TOML job file: [sampler.<type>], [candidates], [service]")
    p.add_argument("--host", help="address to bind (default: [service] host, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: [service] port, else 8815; 0 picks a free one)")
    p.add_argument("--token-file", help="file holding the bearer token every call must carry")
    p.add_argument("--max-rows", type=int, help="most rows a request batch may hold")
    p.add_argument("--max-bytes", type=int, help="most bytes a request batch may hold")
    p.add_argument("--max-negatives", type=int, help="most negatives a request may ask for")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve grpc+tls (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert (mode 0600)")
    p.add_argument("--tls-client-ca", help="PEM CA: mutual TLS, every client needs a certificate it signed")
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a token on a non-loopback host without TLS (a trusted network only)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        help="open calls at once; more are refused as busy (default: 8 a CPU, at least 16)",
    )
    p.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on host:PORT (0 picks a free one)"
    )
    p.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to wait for in-flight calls")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=cmd_serve)


T = TypeVar("T")


def _flag_or_job(flag: T | None, job_value: T) -> T:
    return job_value if flag is None else flag


def cmd_serve(args: argparse.Namespace) -> int:
    # Only negseq's own loggers at the chosen level: at DEBUG, numba alone logs megabytes a compile.
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("negseq").setLevel("WARNING" if getattr(args, "quiet", False) else args.log_level)
    job = ServiceJob.from_toml(args.config)
    for flag, value, low in (
        ("--port", args.port, 0),
        ("--metrics-port", args.metrics_port, 0),
        ("--max-concurrent", args.max_concurrent, 1),
    ):
        high = 65535 if flag.endswith("port") else None
        if value is not None and (value < low or (high is not None and value > high)):
            bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise NegseqError(f"{flag}: expected an integer {bounds}, got {value}")
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(job.limits)}  # --max-* override
    limits = dataclasses.replace(job.limits, **{k: v for k, v in flags.items() if v is not None})
    host = args.host or job.host
    port = _flag_or_job(args.port, job.port)
    token = read_token_file(args.token_file) if args.token_file else None
    tls = ServerTls.from_files(
        _flag_or_job(args.tls_cert, job.tls_cert),
        _flag_or_job(args.tls_key, job.tls_key),
        _flag_or_job(args.tls_client_ca, job.tls_client_ca),
    )
    insecure = bool(_flag_or_job(args.insecure, job.insecure))
    check_token_transport(host, token, tls, insecure)  # here too: before the tables load
    sampler = build_sampler(job.sampler_config, base_dir=job.base_dir)
    try:
        server = SamplerServer(
            sampler,
            host=host,
            port=port,
            token=token,
            limits=limits,
            candidates=job.candidates,
            config=job.sampler_config,
            tls=tls,
            insecure=insecure,
            max_concurrent=_flag_or_job(args.max_concurrent, job.max_concurrent),
            metrics_port=_flag_or_job(args.metrics_port, job.metrics_port),
        )
    except pa.ArrowException as exc:
        raise NegseqError(f"cannot listen on {grpc_location(host, port, tls is not None)}: {exc}") from exc
    if token is None and not is_loopback(host):
        log.warning("listening on %s without a token: anyone who can reach it can call it", host)

    def announce() -> None:  # the line scripts and tests wait for; the ports are the bound ones
        print(f"negseq serve: listening on {server.location}", flush=True)
        if server.metrics is not None:
            print(f"negseq serve: metrics on {server.metrics.url}", flush=True)

    outcome = serve_until_signalled(server, drain_timeout=args.drain_timeout, on_ready=announce)
    if not outcome.complete:  # calls parked in server threads would block the interpreter's exit
        logging.shutdown()
        sys.stdout.flush()
        os._exit(outcome.code)
    return outcome.code


__all__ = ["add_serve", "cmd_serve"]
