"""A stand-in for the `ollama` command line, talking to the server named by OLLAMA_HOST.

It prints what the real CLI prints (tables, progress, errors on stderr with exit status 1),
so the gateway's CLI mode and `auto_start_server` can be tested without Ollama. Installed
as `ollama-emulator`; also `python -m app.emulator`. Only the standard library is used on
the client side, so it starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from typing import Any, NoReturn

from app.emulator.config import VERSION

NO_SERVER = "could not connect to ollama server, run 'ollama serve' to start it"


class CliError(Exception):
    pass


# -- OLLAMA_HOST ---------------------------------------------------------------------


def ollama_host() -> tuple[str, str, int]:
    """(scheme, host, port) from OLLAMA_HOST, with Ollama's defaults."""
    raw = os.environ.get("OLLAMA_HOST", "").strip().strip("\"'").strip()
    scheme, rest = "http", raw
    default_port = 11434
    if "://" in raw:
        scheme, rest = raw.split("://", 1)
        default_port = 443 if scheme == "https" else 80
    elif raw == "ollama.com":
        return "https", "ollama.com", 443
    rest = rest.split("/", 1)[0]
    host, port = rest, default_port
    if rest.startswith("["):
        end = rest.find("]")
        host = rest[1:end]
        if rest[end + 1 : end + 2] == ":":
            port = int(rest[end + 2 :])
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
        port = int(port_text)
    return scheme, host or "127.0.0.1", port


def base_url() -> str:
    scheme, host, port = ollama_host()
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


# -- HTTP ----------------------------------------------------------------------------


def _request(method: str, path: str, body: Any = None, timeout: float = 600) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url() + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        return urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        return exc
    except (urllib.error.URLError, ConnectionError, OSError) as exc:
        raise CliError(NO_SERVER) from exc


def call(method: str, path: str, body: Any = None) -> Any:
    """A non-streamed call: the decoded JSON reply; an error reply raises its text."""
    resp = _request(method, path, body)
    raw = resp.read()
    status = getattr(resp, "status", None) or resp.code
    if status >= 400:
        raise CliError(_error_of(raw, status))
    return json.loads(raw) if raw.strip() else None


def stream(path: str, body: Any) -> Iterator[dict[str, Any]]:
    """A streamed call: each NDJSON object; errors become CliError like the real CLI's."""
    resp = _request("POST", path, body)
    status = getattr(resp, "status", None) or resp.code
    if status >= 400:
        raw = resp.read()
        reason = getattr(resp, "reason", "") or ""
        raise CliError(f"{status} {reason}: {_error_of(raw, status)}")
    for line in resp:
        if not line.strip():
            continue
        obj = json.loads(line)
        if "error" in obj:
            raise CliError(str(obj["error"]))
        yield obj


def _error_of(raw: bytes, status: int) -> str:
    try:
        obj = json.loads(raw)
        return str(obj.get("error", raw.decode()))
    except (ValueError, AttributeError):
        return raw.decode(errors="replace").strip() or f"status {status}"


def check_server() -> None:
    resp = _request("HEAD", "/", timeout=5)
    resp.read()


# -- formatting ----------------------------------------------------------------------


def human_bytes(size: int) -> str:
    """Go's format.HumanBytes: decimal units, one decimal below 10 unless whole."""
    for name, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= factor:
            unit, value = name, size / factor
            break
    else:
        return f"{size} B"
    if value >= 10:
        return f"{int(value)} {unit}"
    if value != math.trunc(value):
        return f"{value:.1f} {unit}"
    return f"{int(value)} {unit}"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def parse_time(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with up to 9 fractional digits."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, tail = text.split(".", 1)
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(text).timestamp()


def go_duration(ns: int) -> str:
    """Go's time.Duration.String()."""
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{_trim(ns / 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{_trim(ns / 1_000_000)}ms"
    seconds = ns / 1e9
    if seconds < 60:
        return f"{_trim(seconds)}s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}m{_trim(rest)}s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes)}m{_trim(rest)}s"


def _trim(value: float) -> str:
    return f"{value:.9f}".rstrip("0").rstrip(".")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """tablewriter v0.0.5 borderless layout, as `ollama list` prints it."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    head = "    ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " "
    lines = [head]
    for row in rows:
        lines.append("".join(c.ljust(w) + "    " for c, w in zip(row, widths, strict=True)))
    return "\n".join(lines) + "\n"


# -- commands ------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> None:
    check_server()
    models = call("GET", "/api/tags")["models"]
    now = time.time()
    rows = [
        [
            m["name"],
            m["digest"][:12],
            human_bytes(m["size"]),
            human_duration(now - parse_time(m["modified_at"])) + " ago",
        ]
        for m in models
        if not args.prefix or m["name"].startswith(args.prefix)
    ]
    sys.stdout.write(table(["NAME", "ID", "SIZE", "MODIFIED"], rows))


def cmd_ps(args: argparse.Namespace) -> None:
    check_server()
    models = call("GET", "/api/ps")["models"]
    now = time.time()
    rows = []
    for m in models:
        size, vram = m["size"], m.get("size_vram", 0)
        if vram == size:
            processor = "100% GPU"
        elif vram == 0:
            processor = "100% CPU"
        elif size > 0:
            cpu = round((size - vram) / size * 100)
            processor = f"{cpu}%/{100 - cpu}% CPU/GPU"
        else:
            processor = "Unknown"
        remaining = parse_time(m["expires_at"]) - now
        if remaining > 20 * 365 * 24 * 3600:
            until = "Forever"
        elif remaining <= 0:
            until = "Stopping..."
        else:
            until = human_duration(remaining) + " from now"
        rows.append(
            [
                m["name"],
                m["digest"][:12],
                human_bytes(size),
                processor,
                str(m.get("context_length", "")),
                until,
            ]
        )
    sys.stdout.write(table(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows))


def pull_model(model: str) -> None:
    shown: set[str] = set()
    for obj in stream("/api/pull", {"name": model}):
        status = obj.get("status", "")
        total, completed = obj.get("total"), obj.get("completed")
        if obj.get("digest") and total:
            if completed == total and status not in shown:
                shown.add(status)
                bar = "█" * 20
                print(f"{status}: 100% ▕{bar}▏ {human_bytes(total)}", file=sys.stderr)
            continue
        if status not in shown:
            shown.add(status)
            print(status, file=sys.stderr)


def cmd_pull(args: argparse.Namespace) -> None:
    check_server()
    pull_model(args.model)


def cmd_run(args: argparse.Namespace) -> None:
    check_server()
    try:
        info = call("POST", "/api/show", {"name": args.model})
    except CliError as exc:
        if "not found" not in str(exc):
            raise
        pull_model(args.model)
        info = call("POST", "/api/show", {"name": args.model})
    prompt = " ".join(args.prompt)
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        if piped:
            prompt = f"{piped}\n{prompt}" if prompt else piped
    if "embedding" in info.get("capabilities", []) and "completion" not in info.get(
        "capabilities", []
    ):
        reply = call("POST", "/api/embed", {"model": args.model, "input": prompt})
        print(json.dumps(reply["embeddings"][0]))
        return
    body: dict[str, Any] = {"model": args.model, "prompt": prompt}
    if args.format:
        body["format"] = args.format
    if args.think is not None:
        body["think"] = args.think
    thinking = False
    final: dict[str, Any] = {}
    for obj in stream("/api/generate", body):
        piece = obj.get("thinking")
        if piece:
            if not thinking and not args.hidethinking:
                sys.stdout.write("Thinking...\n")
            thinking = True
            if not args.hidethinking:
                sys.stdout.write(piece)
        response = obj.get("response", "")
        if response:
            if thinking:
                if not args.hidethinking:
                    sys.stdout.write("\n...done thinking.\n\n")
                thinking = False
            sys.stdout.write(response)
        sys.stdout.flush()
        if obj.get("done"):
            final = obj
    sys.stdout.write("\n\n")
    sys.stdout.flush()
    if args.verbose and final:
        lines = [
            f"total duration:       {go_duration(final.get('total_duration', 0))}",
            f"load duration:        {go_duration(final.get('load_duration', 0))}",
            f"prompt eval count:    {final.get('prompt_eval_count', 0)} token(s)",
            f"prompt eval duration: {go_duration(final.get('prompt_eval_duration', 0))}",
            f"prompt eval rate:     {_rate(final, 'prompt_eval')} tokens/s",
            f"eval count:           {final.get('eval_count', 0)} token(s)",
            f"eval duration:        {go_duration(final.get('eval_duration', 0))}",
            f"eval rate:            {_rate(final, 'eval')} tokens/s",
        ]
        print("\n".join(lines), file=sys.stderr)


def _rate(final: dict[str, Any], prefix: str) -> str:
    count, duration = final.get(f"{prefix}_count", 0), final.get(f"{prefix}_duration", 0)
    return f"{count / duration * 1e9:.2f}" if duration else "0.00"


def cmd_show(args: argparse.Namespace) -> None:
    check_server()
    info = call("POST", "/api/show", {"name": args.model})
    for field in ("license", "modelfile", "parameters", "system", "template"):
        if getattr(args, field):
            print(info.get(field, ""))
            return
    details = info.get("details", {})
    model_info = info.get("model_info", {})
    arch = model_info.get("general.architecture", "")
    rows = [
        ("architecture", arch),
        ("parameters", details.get("parameter_size", "")),
        ("context length", str(model_info.get(f"{arch}.context_length", ""))),
        ("embedding length", str(model_info.get(f"{arch}.embedding_length", ""))),
        ("quantization", details.get("quantization_level", "")),
    ]
    out = ["  Model"]
    out += [f"    {k.ljust(20)}{v}" for k, v in rows if v]
    out += ["", "  Capabilities"]
    out += [f"    {c}" for c in info.get("capabilities", [])]
    out.append("")
    if info.get("parameters"):
        out.append("  Parameters")
        for line in info["parameters"].splitlines():
            key, _, value = line.partition(" ")
            out.append(f"    {key.ljust(8)}{value.strip()}")
        out.append("")
    if info.get("system"):
        out += ["  System", f"    {info['system']}", ""]
    license_lines = [ln for ln in info.get("license", "").splitlines() if ln.strip()]
    if license_lines:
        out.append("  License")
        out += [f"    {ln.strip()}" for ln in license_lines[:2]]
        out += ["    ...", ""]
    print("\n".join(out))


def cmd_rm(args: argparse.Namespace) -> None:
    check_server()
    for model in args.models:
        with contextlib.suppress(CliError):
            call("POST", "/api/generate", {"model": model, "keep_alive": 0})
        call("DELETE", "/api/delete", {"name": model})
        print(f"deleted '{model}'")


def cmd_cp(args: argparse.Namespace) -> None:
    check_server()
    call("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")


def cmd_stop(args: argparse.Namespace) -> None:
    check_server()
    try:
        call("POST", "/api/generate", {"model": args.model, "keep_alive": 0})
    except CliError as exc:
        if "not found" in str(exc):
            raise CliError(f"couldn't find model {json.dumps(args.model)} to stop") from exc
        raise


def cmd_serve(args: argparse.Namespace) -> None:
    from app.emulator.config import EmulatorConfig
    from app.emulator.server import serve

    _, host, port = ollama_host()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(f"listen tcp {host}:{port}: bind: address already in use") from exc
    models = os.environ.get("OLLAMA_EMULATOR_MODELS", "llama3.1:8b")
    serve(
        EmulatorConfig(
            host=host,
            port=port,
            models=[m.strip() for m in models.split(",") if m.strip()],
            token_delay_ms=float(os.environ.get("OLLAMA_EMULATOR_TOKEN_DELAY_MS", "0")),
        )
    )


def cmd_version() -> None:
    try:
        server = call("GET", "/api/version")["version"]
    except CliError:
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {VERSION}")
        return
    print(f"ollama version is {server}")
    if server != VERSION:
        print(f"Warning: client version is {VERSION}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ollama", description="Large language model runner")
    parser.add_argument("-v", "--version", action="store_true", help="Show version information")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", aliases=["start"], help="Start ollama")
    p = sub.add_parser("list", aliases=["ls"], help="List models")
    p.add_argument("prefix", nargs="?")
    sub.add_parser("ps", help="List running models")
    p = sub.add_parser("pull", help="Pull a model from a registry")
    p.add_argument("model")
    p.add_argument("--insecure", action="store_true")
    p = sub.add_parser("run", help="Run a model")
    p.add_argument("model")
    p.add_argument("prompt", nargs=argparse.REMAINDER)
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--nowordwrap", action="store_true")
    p.add_argument("--format", default="")
    p.add_argument("--hidethinking", action="store_true")
    p.add_argument(
        "--think",
        default=None,
        type=lambda v: v if v in ("low", "medium", "high") else v != "false",
    )
    p.add_argument("--keepalive", default=None)
    p = sub.add_parser("show", help="Show information for a model")
    p.add_argument("model")
    for flag in ("license", "modelfile", "parameters", "system", "template"):
        p.add_argument(f"--{flag}", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p = sub.add_parser("rm", help="Remove a model")
    p.add_argument("models", nargs="+")
    p = sub.add_parser("cp", help="Copy a model")
    p.add_argument("source")
    p.add_argument("destination")
    p = sub.add_parser("stop", help="Stop a running model")
    p.add_argument("model")
    return parser


COMMANDS = {
    "serve": cmd_serve,
    "start": cmd_serve,
    "list": cmd_list,
    "ls": cmd_list,
    "ps": cmd_ps,
    "pull": cmd_pull,
    "run": cmd_run,
    "show": cmd_show,
    "rm": cmd_rm,
    "cp": cmd_cp,
    "stop": cmd_stop,
}


def fail(message: str) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.prompt and args.prompt[0] == "--":
        args.prompt = args.prompt[1:]
    try:
        if args.version:
            cmd_version()
            return
        if args.command is None:
            parser.print_help()
            return
        COMMANDS[args.command](args)
    except CliError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
