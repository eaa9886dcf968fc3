"""`aia`: the operator's command line — API keys, key rings, data-key rotation, redispatch.

The client commands (submit, status, list, wait, dlq) are the SDK's (`aia_client.cli`).
Against the running local stack it needs no flags: it reads `.aia/dev.env`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from shared import providers
from shared.errors import AIAError

# The local stack's environment: beside the caller, or in the checkout holding this file.
DEV_ENV_CANDIDATES = (
    Path(".aia") / "dev.env",
    Path(__file__).resolve().parent.parent / ".aia" / "dev.env",
)


# Served by the SDK's command line, imported only when one of them runs.
CLIENT_COMMANDS = {
    "submit": "submit a task",
    "status": "show one task",
    "list": "list tasks, newest first",
    "wait": "wait for a task, showing progress",
    "dlq": "tasks that failed for good: list, replay",
}


def load_dev_env(path: Path) -> None:
    """Adopt the local stack's environment, without overriding what is already set."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            words = words[1:]
        if len(words) == 1 and "=" in words[0]:
            name, _, value = words[0].partition("=")
            os.environ.setdefault(name, value)


def _keys_create(args: argparse.Namespace) -> int:
    key_id, key = providers.api_keys().create(args.tenant)
    print(f"created key {key_id} for tenant {args.tenant}", file=sys.stderr)
    print(key)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    key_id = args.key_id.split("_")[1] if args.key_id.startswith("aia_") else args.key_id
    providers.api_keys().revoke(key_id)
    print(f"revoked key {key_id}", file=sys.stderr)
    return 0


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _keyring_generate(args: argparse.Namespace) -> int:
    from shared.security.keyring import KeyRing, generate_keyring, rotate_keyring

    if args.rotate:
        ring = rotate_keyring(KeyRing.from_json(args.out.read_text(encoding="utf-8")), args.scheme)
    else:
        if args.out.exists() and not args.force:
            print(f"{args.out} exists; pass --rotate to add a key or --force", file=sys.stderr)
            return 2
        ring = generate_keyring(args.scheme)
    _write_secret(args.out, ring.to_json())
    public_out = args.public_out or args.out.with_name(args.out.stem + ".public.json")
    _write_secret(public_out, ring.public_only().to_json())
    print(
        f"key ring written; current key {ring.current_key_id}\n"
        f"  private ring {args.out}: store as secret 'aia-keyring-private' "
        "(process_task, task_status)\n"
        f"  public ring  {public_out}: store as secret 'aia-keyring-public' (submit_task)\n"
        "  e.g. gcloud secrets versions add aia-keyring-private --data-file=" + str(args.out),
        file=sys.stderr,
    )
    return 0


def _rotate_data(args: argparse.Namespace) -> int:
    from shared.security.rotation import rewrap_all

    report = rewrap_all(
        providers.task_repository(),
        batch_size=args.batch_size,
        start_after=args.start_after,
        progress=lambda last, n: print(
            f"rewrapped {n} so far; resume with --start-after {last}", file=sys.stderr
        ),
    )
    print(f"scanned {report.scanned}, rewrapped {report.rewrapped}", file=sys.stderr)
    for task_id, why in report.unreadable:
        print(f"cannot re-wrap task {task_id}: {why}", file=sys.stderr)
    # Webhook signing keys are sealed under the same ring: few, so always all of them.
    from shared.security.crypto import TaskOpener
    from shared.webhooks.keys import rewrap_endpoint_keys

    keys = rewrap_endpoint_keys(providers.webhook_store(), TaskOpener(providers.keyring()))
    print(f"webhook endpoints: scanned {keys.scanned}, rewrapped {keys.rewrapped}", file=sys.stderr)
    for endpoint_id, why in keys.unreadable:
        print(f"cannot re-wrap the keys of webhook {endpoint_id}: {why}", file=sys.stderr)
    return 1 if report.unreadable or keys.unreadable else 0


def _redispatch(args: argparse.Namespace) -> int:
    swept = providers.redispatcher().sweep()
    print(
        f"found {swept.found}, published {swept.published}, dead-lettered {swept.dead_lettered}",
        file=sys.stderr,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aia", description=__doc__)
    groups = parser.add_subparsers(dest="group", required=True)

    keys = groups.add_parser("keys", help="API keys and data-key rotation").add_subparsers(
        dest="command", required=True
    )
    create = keys.add_parser("create", help="create an API key; prints it alone on stdout")
    create.add_argument("--tenant", required=True)
    create.set_defaults(run=_keys_create)
    revoke = keys.add_parser("revoke", help="revoke an API key by id (or the key itself)")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)
    rotate = keys.add_parser(
        "rotate-data", help="re-wrap every task's data key under the current key"
    )
    rotate.add_argument("--batch-size", type=int, default=200)
    rotate.add_argument("--start-after", default=None, help="resume after this task id")
    rotate.set_defaults(run=_rotate_data)

    keyring = groups.add_parser("keyring", help="key rings for payload encryption")
    ring_cmds = keyring.add_subparsers(dest="command", required=True)
    generate = ring_cmds.add_parser("generate", help="write a new key ring (or rotate one)")
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--public-out", type=Path, default=None)
    generate.add_argument(
        "--scheme", default="hybrid-mlkem768-x25519", choices=["hybrid-mlkem768-x25519", "fernet"]
    )
    generate.add_argument("--rotate", action="store_true", help="add a new current key")
    generate.add_argument("--force", action="store_true", help="overwrite an existing ring")
    generate.set_defaults(run=_keyring_generate)

    tasks = groups.add_parser("tasks", help="task maintenance").add_subparsers(
        dest="command", required=True
    )
    redispatch = tasks.add_parser("redispatch", help="publish stuck tasks again")
    redispatch.set_defaults(run=_redispatch)

    for name, text in CLIENT_COMMANDS.items():
        # Listed for --help only: main() hands these to the SDK before parsing.
        groups.add_parser(name, help=f"{text} (aia {name} --help)", add_help=False)
    return parser


def _client_main(argv: list[str]) -> int:
    try:
        from aia_client.cli import dev_env_files
        from aia_client.cli import main as client_main
    except ImportError:
        print("aia: client commands need the SDK: pip install -e './sdk[cli]'", file=sys.stderr)
        return 2
    # Nearest to the caller first, then this checkout's, as for the operator commands.
    return client_main(argv, dev_env=[*dev_env_files(Path.cwd()), DEV_ENV_CANDIDATES[-1]])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in CLIENT_COMMANDS:
        return _client_main(argv)
    args = build_parser().parse_args(argv)
    for candidate in DEV_ENV_CANDIDATES:
        load_dev_env(candidate)
    try:
        code: int = args.run(args)
    except AIAError as exc:
        print(f"aia: {exc.detail}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
