"""`aia`: the operator's command line — API keys, key rings, data-key rotation, redispatch,
budgets and rate limits.

The client commands (submit, status, list, wait, dlq) are the SDK's (`aia_client.cli`).
Against the running local stack it needs no flags: it reads `.aia/dev.env`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from shared import providers
from shared.errors import AIAError
from shared.tasks.models import MAX_RUNNING

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
    "usage": "your token balance, spending and limits",
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


def _budgets_grant(args: argparse.Namespace) -> int:
    grant_id = providers.budget_bank().grant(args.tenant, args.tokens, reason=args.reason)
    print(
        f"granted {args.tokens} tokens to {args.tenant} (ledger grant:{grant_id})", file=sys.stderr
    )
    return _budgets_show(args)


def _budgets_set(args: argparse.Namespace) -> int:
    budget = providers.budget_bank().set_budget(
        args.tenant, monthly=args.monthly, shards=args.shards
    )
    allowance = f"{budget.monthly} tokens a month" if budget.monthly else "grants only"
    print(f"budget of {args.tenant}: {allowance}, {budget.shards} shards", file=sys.stderr)
    return _budgets_show(args)


def _budgets_show(args: argparse.Namespace) -> int:
    import json

    shown = providers.usage_service().usage(args.tenant)
    if shown.get("budgeted"):
        totals = providers.budget_bank().snapshot(args.tenant).totals
        # The escrow's identity, checked on what was just read: an operator sees drift at once.
        shown["escrow_balanced"] = totals.balanced
    if getattr(args, "json", False):
        print(json.dumps(shown, indent=2, sort_keys=True))
    elif not shown.get("budgeted"):
        print(f"{args.tenant}: no budget (submits are not metered)")
    else:
        period = shown["period"]
        monthly = shown["monthly"] or "none"
        print(
            f"{args.tenant}: balance {shown['balance']}, reserved {shown['reserved']}, "
            f"spent {period['spent']} in {period['id']} (monthly {monthly}), "
            f"escrow {'balanced' if shown['escrow_balanced'] else 'NOT BALANCED'}"
        )
        for task_type, n in period["by_type"].items():
            print(f"  {task_type}: {n}")
    return 0 if shown.get("escrow_balanced", True) else 1


def _tenants_set_limits(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from shared.flow.limits_store import ALL_TYPES, LimitSpec

    store = providers.flow_config()
    config = None
    if args.max_running is not None:
        config = store.set_max_running(args.tenant, args.max_running or None)
        shown = config.max_running or "no limit"
        print(f"{args.tenant}: max_running {shown}", file=sys.stderr)
    if args.rate is not None or args.burst is not None or args.clear:
        scope = args.type or ALL_TYPES
        try:
            spec = None if args.clear else LimitSpec(rate=args.rate, burst=args.burst)
        except ValidationError as exc:
            print(f"aia: invalid limit: {exc.errors()[0]['msg']}", file=sys.stderr)
            return 2
        config = store.set_limit(args.tenant, scope, spec)
        what = "all submits" if scope == ALL_TYPES else f"type {scope}"
        if spec is None:
            print(f"{args.tenant}: no rate limit on {what}", file=sys.stderr)
        else:
            print(f"{args.tenant}: {spec.rate:g}/s, burst {spec.burst} on {what}", file=sys.stderr)
    assert config is not None  # main() refuses a call that changes nothing
    for name, limit in sorted(config.limits.items()):
        print(f"{'*' if name == ALL_TYPES else name}\t{limit.rate:g}/s\tburst {limit.burst}")
    if config.max_running is not None:
        print(f"max_running\t{config.max_running}")
    return 0


def _max_running(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_RUNNING:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number 0-{MAX_RUNNING}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number > 0")
    return value


def _add_budget_commands(groups: Any) -> None:
    budgets = groups.add_parser("budgets", help="tenants' token budgets").add_subparsers(
        dest="command", required=True
    )
    grant = budgets.add_parser("grant", help="give a tenant tokens (one-off)")
    grant.add_argument("--tenant", required=True)
    grant.add_argument("--tokens", type=_positive_int, required=True)
    grant.add_argument("--reason", default="")
    grant.set_defaults(run=_budgets_grant)
    setting = budgets.add_parser(
        "set", help="a tenant's monthly allowance (refilled each UTC month)"
    )
    setting.add_argument("--tenant", required=True)
    setting.add_argument("--monthly", type=int, required=True, help="tokens a month; 0 for none")
    setting.add_argument("--shards", type=_positive_int, default=None, help="escrow shards")
    setting.set_defaults(run=_budgets_set)
    show = budgets.add_parser("show", help="a tenant's balance, holds and spending")
    show.add_argument("--tenant", required=True)
    show.add_argument("--json", action="store_true")
    show.set_defaults(run=_budgets_show)

    tenants = groups.add_parser("tenants", help="tenants' limits").add_subparsers(
        dest="command", required=True
    )
    limits = tenants.add_parser(
        "set-limits", help="a tenant's rate limit (all submits or a type) and max_running"
    )
    limits.add_argument("--tenant", required=True)
    limits.add_argument("--rate", type=float, default=None, help="sustained submits per second")
    limits.add_argument("--burst", type=_positive_int, default=None, help="submits at once")
    limits.add_argument("--type", default=None, help="limit this task type only")
    limits.add_argument("--clear", action="store_true", help="remove the rate limit")
    limits.add_argument(
        "--max-running",
        type=_max_running,
        default=None,
        help=f"tasks of the tenant running at once (1-{MAX_RUNNING}; 0 removes the limit)",
    )
    limits.set_defaults(run=_tenants_set_limits)


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

    _add_budget_commands(groups)

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
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is _tenants_set_limits and not args.clear:
        rate_given = args.rate is not None or args.burst is not None
        if (rate_given or args.max_running is None) and (args.rate is None or args.burst is None):
            parser.error("set-limits needs --rate and --burst, --clear or --max-running")
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
