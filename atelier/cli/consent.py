"""`atelier consent grant|withdraw|show|history`: an account's consent records."""

from __future__ import annotations

import argparse

from atelier.cli._cluster import add_json_flag, connect, rpc_errors
from atelier.cli._output import emit
from protos.atelier.v1 import control_plane_pb2

_PURPOSES = {
    "training": control_plane_pb2.CONSENT_PURPOSE_TRAINING,
    "analytics": control_plane_pb2.CONSENT_PURPOSE_ANALYTICS,
    "marketing": control_plane_pb2.CONSENT_PURPOSE_MARKETING,
    "processing": control_plane_pb2.CONSENT_PURPOSE_PROCESSING,
}
_METHODS = {
    "settings": control_plane_pb2.CONSENT_METHOD_SETTINGS,
    "api": control_plane_pb2.CONSENT_METHOD_API,
    "guardian": control_plane_pb2.CONSENT_METHOD_GUARDIAN,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("consent", help="record and inspect consent")
    commands = parser.add_subparsers(dest="consent_command", required=True, metavar="COMMAND")
    for name, granted in (("grant", True), ("withdraw", False)):
        command = commands.add_parser(name, help=f"{name} consent for a purpose")
        command.add_argument("account_id")
        command.add_argument("purpose", choices=sorted(_PURPOSES))
        command.add_argument("--method", choices=sorted(_METHODS), default="api", help="how it was collected")
        command.add_argument("--source", default="cli", help="where it was collected (default cli)")
        add_json_flag(command)
        command.set_defaults(run=run_record, granted=granted)

    show = commands.add_parser("show", help="current state of every purpose")
    show.add_argument("account_id")
    add_json_flag(show)
    show.set_defaults(run=run_show)

    history = commands.add_parser("history", help="every consent record, oldest first")
    history.add_argument("account_id")
    add_json_flag(history)
    history.set_defaults(run=run_history)


def _name(enum: type, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def run_record(args: argparse.Namespace) -> int:
    request = control_plane_pb2.RecordConsentRequest(
        account_id=args.account_id,
        purpose=_PURPOSES[args.purpose],
        granted=args.granted,
        method=_METHODS[args.method],
        source=args.source,
    )
    with connect(args.timeout) as cluster, rpc_errors():
        record = cluster.control_plane.RecordConsent(request, metadata=cluster.metadata).record
    result = {"consent_id": record.consent_id, "purpose": args.purpose, "granted": record.granted}
    emit(result, f"{'granted' if record.granted else 'withdrew'} {args.purpose}", json_output=args.json)
    return 0


def run_show(args: argparse.Namespace) -> int:
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.GetConsents(
            control_plane_pb2.GetConsentsRequest(account_id=args.account_id), metadata=cluster.metadata
        )
    states = {
        _name(control_plane_pb2.ConsentPurpose, s.purpose, "CONSENT_PURPOSE_"): {
            "granted": s.granted,
            "explicit": s.explicit,
        }
        for s in response.consents
    }
    result = {
        "consents": states,
        "training_consent_mode": _name(
            control_plane_pb2.TrainingConsentMode, response.training_consent_mode, "TRAINING_CONSENT_MODE_"
        ),
        "guardian_consent_required": response.guardian_consent_required,
        "may_process": response.may_process,
    }
    lines = [
        f"{p:11} {'granted' if s['granted'] else 'not granted'}{'' if s['explicit'] else ' (default)'}"
        for p, s in states.items()
    ]
    emit(result, "\n".join(lines), json_output=args.json)
    return 0


def run_history(args: argparse.Namespace) -> int:
    with connect(args.timeout) as cluster, rpc_errors():
        response = cluster.control_plane.ListConsentHistory(
            control_plane_pb2.ListConsentHistoryRequest(account_id=args.account_id), metadata=cluster.metadata
        )
    records = [
        {
            "consent_id": r.consent_id,
            "purpose": _name(control_plane_pb2.ConsentPurpose, r.purpose, "CONSENT_PURPOSE_"),
            "granted": r.granted,
            "method": _name(control_plane_pb2.ConsentMethod, r.method, "CONSENT_METHOD_"),
            "source": r.source,
            "policy_version": r.policy_version,
            "recorded_at": r.recorded_at.ToJsonString(),
        }
        for r in response.records
    ]
    lines = [
        f"{r['recorded_at']}  {r['purpose']:10} {'grant' if r['granted'] else 'withdraw'} via {r['method']}"
        for r in records
    ]
    emit({"records": records}, "\n".join(lines) or "no records", json_output=args.json)
    return 0
