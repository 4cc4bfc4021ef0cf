"""Build the Lambda@Edge package: the handlers plus the baked configuration, as one zip.

Lambda@Edge has no environment variables, so the configuration goes into the package:

    python -m gateway_plugins.lambda_edge.build --sidecar-url https://tollgate.internal.example.com \
        [--check-timeout-ms 300] [--usage-timeout-ms 1000] [--api-key-header x-api-key] \
        [--config extra.json] [--out dist/tollgate-lambda-edge.zip]

Deploy the same zip twice (Python 3.12 runtime, us-east-1): handler `viewer_request.handler` on
the viewer-request trigger (with "Include body"), `viewer_response.handler` on the
origin-response (or viewer-response) trigger. The build refuses a package over 1 MB, the limit
of viewer triggers.
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = ("tollgate_edge.py", "viewer_request.py", "viewer_response.py")
SHARED = ("openai_errors.py", "openai_errors.json", "check_contract.py")  # gateway_plugins/: how a DENY reaches OpenAI clients, the estimate, a check reply read
MAX_PACKAGE_BYTES = 1024 * 1024  # viewer-request / viewer-response functions: 1 MB compressed

try:
    from . import tollgate_edge  # validate_config, shared with the handlers
except ImportError:  # run as a script
    sys.path.insert(0, str(HERE))
    import tollgate_edge  # noqa: E402


def build(config: dict, out: Path, max_bytes: int = MAX_PACKAGE_BYTES) -> Path:
    """Write the zip; returns its path. Raises ConfigError / ValueError."""
    cfg = tollgate_edge.validate_config(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in [HERE / name for name in MODULES] + [HERE.parent / name for name in SHARED]:
            info = zipfile.ZipInfo(path.name, date_time=(2020, 1, 1, 0, 0, 0))  # reproducible, top-level
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, path.read_bytes())
        info = zipfile.ZipInfo(tollgate_edge.CONFIG_FILE, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, json.dumps(cfg, indent=2, sort_keys=True))
    size = out.stat().st_size
    if size >= max_bytes:
        out.unlink()
        raise ValueError(f"package is {size} bytes, over the {max_bytes} bytes allowed (1 MB: viewer triggers)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway_plugins.lambda_edge.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--sidecar-url", help="base URL of the tollgate enforcer, reachable from the edge")
    p.add_argument("--check-timeout-ms", type=int)
    p.add_argument("--usage-timeout-ms", type=int)
    p.add_argument("--api-key-header")
    p.add_argument("--default-model")
    p.add_argument("--no-fail-open", action="store_true", help="answer 503 when the sidecar fails")
    p.add_argument("--config", type=Path, help="JSON file with more settings (see tollgate_edge.DEFAULTS)")
    p.add_argument("--out", type=Path, default=Path("dist/tollgate-lambda-edge.zip"))
    a = p.parse_args(argv)
    config = json.loads(a.config.read_text()) if a.config else {}
    for key, value in (("sidecar_url", a.sidecar_url), ("check_timeout_ms", a.check_timeout_ms),
                       ("usage_timeout_ms", a.usage_timeout_ms), ("api_key_header", a.api_key_header),
                       ("default_model", a.default_model)):
        if value is not None:
            config[key] = value
    if a.no_fail_open:
        config["fault_tolerant"] = False
    try:
        out = build(config, a.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
