"""`negseq serve`: its arguments and what it runs (the top-level `negseq` command wires it in)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import pyarrow as pa

from negseq.config import add_config_flags, flag_values, load_config
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
        "Arrow Flight until SIGTERM (which drains in-flight requests, then exits 0). Every [service] "
        "key of the job file is also a flag, which overrides it.",
        epilog="example: negseq serve --config job.toml --token-file token --tls-cert server.crt "
        "--tls-key server.key --metrics-port 9815",
    )
    p.add_argument("--config", required=True, help="TOML job file: [sampler.<type>], [candidates], [service]")
    add_config_flags(p, "serve")
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    job = ServiceJob.from_config(load_config(args.config, command="serve", flags=flag_values(args, "serve")))
    svc = job.config.service
    # Only negseq's own loggers at the chosen level: at DEBUG, numba alone logs megabytes a compile.
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("negseq").setLevel("WARNING" if getattr(args, "quiet", False) else svc.log_level)
    token = read_token_file(svc.token_file) if svc.token_file else None
    tls = ServerTls.from_files(svc.tls_cert, svc.tls_key, svc.tls_client_ca)
    check_token_transport(svc.host, token, tls, svc.insecure)  # here too: before the tables load
    sampler = build_sampler(job.sampler_config)
    try:
        server = SamplerServer(
            sampler,
            host=svc.host,
            port=svc.port,
            token=token,
            limits=job.limits,
            candidates=job.candidates,
            config=job.sampler_config.table(),
            tls=tls,
            insecure=svc.insecure,
            max_concurrent=svc.max_concurrent,
            metrics_port=svc.metrics_port,
        )
    except pa.ArrowException as exc:
        location = grpc_location(svc.host, svc.port, tls is not None)
        raise NegseqError(f"cannot listen on {location}: {exc}") from exc
    if token is None and not is_loopback(svc.host):
        log.warning("listening on %s without a token: anyone who can reach it can call it", svc.host)

    def announce() -> None:  # the line scripts and tests wait for; the ports are the bound ones
        print(f"negseq serve: listening on {server.location}", flush=True)
        if server.metrics is not None:
            print(f"negseq serve: metrics on {server.metrics.url}", flush=True)

    outcome = serve_until_signalled(server, drain_timeout=svc.drain_timeout, on_ready=announce)
    if not outcome.complete:  # calls parked in server threads would block the interpreter's exit
        logging.shutdown()
        sys.stdout.flush()
        os._exit(outcome.code)
    return outcome.code


__all__ = ["add_serve", "cmd_serve"]
