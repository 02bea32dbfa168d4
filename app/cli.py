"""The operator's command line: `python -m app.cli --help`.

Every command runs against DATABASE_URL (the same settings as the server), in one transaction
that commits only when the command succeeds. Errors print one line on stderr and exit 1;
`--json` prints what a script would read on stdout.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.billing import invoices, service
from app.core.config import get_settings
from app.core.db import get_database
from app.core.errors import AppError, NotFound
from app.core.schemas import PageParams
from app.ingest import queue
from app.models import Chatbot, Role
from app.users.schemas import UserCreate
from app.users.service import create_user

F = TypeVar("F", bound=Callable[..., Any])

cli = typer.Typer(
    help="Operate the chatbot platform: customers, tokens, invoices, users, chatbots, queue, "
    "reservations, embeddings.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
customers = typer.Typer(help="Customers (tenants).", no_args_is_help=True)
tokens = typer.Typer(help="Token balances.", no_args_is_help=True)
invoices_cli = typer.Typer(help="Invoices.", no_args_is_help=True)
users = typer.Typer(help="Users of a customer.", no_args_is_help=True)
chatbots = typer.Typer(help="Chatbots.", no_args_is_help=True)
queue_cli = typer.Typer(help="The ingestion queue.", no_args_is_help=True)
reservations = typer.Typer(help="Token reservations of answers in progress.", no_args_is_help=True)
cli.add_typer(customers, name="customers")
cli.add_typer(tokens, name="tokens")
cli.add_typer(invoices_cli, name="invoices")
cli.add_typer(users, name="users")
cli.add_typer(chatbots, name="chatbots")
cli.add_typer(queue_cli, name="queue")
embeddings_cli = typer.Typer(help="The embedding model's CPU backends.", no_args_is_help=True)
cli.add_typer(reservations, name="reservations")
cli.add_typer(embeddings_cli, name="embeddings")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


class Failed(Exception):
    """A one-line error for the operator."""


@contextmanager
def transaction() -> Iterator[Session]:
    with get_database().session() as session:
        yield session


def command(func: F) -> F:
    """One line on stderr and exit 1 for every failure an operator can meet."""

    @wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (AppError, Failed) as exc:
            message = exc.detail if isinstance(exc, AppError) else str(exc)
            typer.echo(f"error: {message}", err=True)
        except OperationalError as exc:
            typer.echo(f"error: the database is unavailable ({type(exc.orig).__name__})", err=True)
        raise typer.Exit(1)

    return run  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    return value


def emit(as_json: bool, data: Any, lines: Sequence[str]) -> None:
    if as_json:
        typer.echo(json.dumps(_plain(data), indent=2, ensure_ascii=False))
    else:
        for line in lines:
            typer.echo(line)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]


def _invoice(invoice: Any) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "invoice_number": invoice.invoice_number,
        "customer_id": invoice.customer_id,
        "amount": f"{invoice.amount:.2f}",
        "currency": invoice.currency,
        "tokens": invoice.tokens,
        "status": invoices.status_of(invoice),
        "issued_at": invoice.issued_at,
        "due_date": invoice.due_date,
        "paid_at": invoice.paid_at,
        "voided_at": invoice.voided_at,
    }


# --- customers ---


@customers.command("list")
@command
def customers_list(as_json: JsonFlag = False) -> None:
    """Every customer with its balance, tokens used and number of chatbots."""
    with transaction() as session:
        rows = service.customer_balances(session)
    emit(
        as_json,
        rows,
        _table(
            ("id", "name", "contact_email", "remaining", "used", "chatbots"),
            [
                (r.id, r.name, r.contact_email, r.tokens_remaining, r.tokens_used, r.chatbots)
                for r in rows
            ],
        ),
    )


# --- tokens ---


@tokens.command("grant")
@command
def tokens_grant(
    customer: Annotated[str, typer.Argument(help="Customer id or contact email.")],
    amount: Annotated[int, typer.Argument(help="Tokens to add.", min=1, max=10**12)],
    reason: Annotated[str, typer.Option(help="Why (kept with the grant).")],
    as_json: JsonFlag = False,
) -> None:
    """Add tokens to a customer's balance, recording the reason."""
    if not reason.strip():
        raise Failed("--reason must say why the tokens are granted.")
    with transaction() as session:
        found = service.find_customer(session, customer)
        credit = service.credit_tokens(
            session, found.id, amount, kind="grant", reason=reason.strip()
        )
        balance = service.get_usage(session, found.id).tokens_remaining
    emit(
        as_json,
        {"credit_id": credit.id, "customer_id": found.id, "tokens": amount, "balance": balance},
        [f"granted {amount:,} tokens to {found.name} ({found.id}); balance {balance:,}"],
    )


# --- invoices ---


@invoices_cli.command("list")
@command
def invoices_list(
    status: Annotated[str | None, typer.Option(help="pending, paid, void or overdue.")] = None,
    customer: Annotated[str | None, typer.Option(help="Customer id or contact email.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Invoices, newest first."""
    if status is not None and status not in invoices.STATUSES:
        raise Failed(f"--status must be one of {', '.join(invoices.STATUSES)}.")
    with transaction() as session:
        customer_id = service.find_customer(session, customer).id if customer else None
        rows, total = invoices.list_invoices(
            session, customer_id, PageParams(limit=limit, offset=0), status
        )
        data = [_invoice(row) for row in rows]
    emit(
        as_json,
        {"items": data, "total": total},
        _table(
            ("number", "status", "amount", "tokens", "customer_id", "due"),
            [
                (
                    d["invoice_number"],
                    d["status"],
                    f"{d['amount']} {d['currency']}",
                    d["tokens"],
                    d["customer_id"],
                    d["due_date"].date(),
                )
                for d in data
            ],
        )
        + [f"{len(data)} of {total}"],
    )


@invoices_cli.command("mark-paid")
@command
def invoices_mark_paid(
    number: Annotated[str, typer.Argument(help="The invoice number, e.g. INV-2026-000042.")],
    as_json: JsonFlag = False,
) -> None:
    """Mark an invoice paid and credit its tokens (once: running it again changes nothing)."""
    with transaction() as session:
        invoice = invoices.invoice_by_number(session, number)
        payment = invoices.pay_invoice(session, invoice.id, "operator")
        data = {**_invoice(payment.invoice), "credited": payment.credited}
    done = (
        f"credited {payment.invoice.tokens:,} tokens"
        if payment.credited
        else "was already paid; nothing credited"
    )
    emit(as_json, data, [f"{payment.invoice.invoice_number} paid: {done}"])


@invoices_cli.command("void")
@command
def invoices_void(
    number: Annotated[str, typer.Argument(help="The invoice number.")],
    as_json: JsonFlag = False,
) -> None:
    """Void a pending invoice."""
    with transaction() as session:
        invoice = invoices.void_invoice(session, invoices.invoice_by_number(session, number))
        data = _invoice(invoice)
    emit(as_json, data, [f"{data['invoice_number']} voided"])


# --- users ---


@users.command("create-admin")
@command
def users_create_admin(
    customer: Annotated[str, typer.Argument(help="Customer id or contact email.")],
    username: Annotated[str, typer.Argument(help="3-64 of letters, digits and _ . @ + -")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True, hide_input=True, confirmation_prompt=True, help="Asked when omitted."
        ),
    ],
    as_json: JsonFlag = False,
) -> None:
    """Add an admin user to a customer (e.g. when its last admin left)."""
    try:
        data = UserCreate(username=username, password=password, role=Role.admin)
    except ValueError as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"msg": str(exc), "loc": ()}
        raise Failed(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    with transaction() as session:
        found = service.find_customer(session, customer)
        user = create_user(session, found.id, data)
        out = {"user_id": user.id, "username": user.username, "customer_id": found.id}
    emit(as_json, out, [f"admin {username} ({out['user_id']}) added to {found.name}"])


# --- chatbots ---


@chatbots.command("reindex")
@command
def chatbots_reindex(
    chatbot_id: Annotated[str, typer.Argument(help="The chatbot's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Re-embed every document of a chatbot (after changing EMBEDDING_MODEL); the workers
    rebuild its collection."""
    try:
        key = uuid.UUID(chatbot_id)
    except ValueError as exc:
        raise Failed(f"{chatbot_id!r} is not a chatbot id (a UUID).") from exc
    from app.documents.service import reindex  # imports Chroma: only for this command

    with transaction() as session:
        chatbot = session.get(Chatbot, key)
        if chatbot is None:
            raise NotFound(f"No chatbot {key}.")
        queued = reindex(session, chatbot)
    emit(
        as_json,
        {"chatbot_id": key, "documents_queued": queued},
        [f"{queued} document(s) of {key} queued; a worker rebuilds the collection"],
    )


# --- queue ---


@queue_cli.command("status")
@command
def queue_status(as_json: JsonFlag = False) -> None:
    """Documents by status, the oldest queued one's age, failures with their reasons, and
    vector deletions still waiting for the vector store."""
    from app.ingest.deletions import pending_count  # imports Chroma's client: only here

    with transaction() as session:
        status = queue.queue_status(session)
        waiting = pending_count(session)
    age = status.oldest_queued_seconds
    lines = [", ".join(f"{k}: {v}" for k, v in status.counts.items())]
    lines.append(f"oldest queued: {'-' if age is None else f'{age:.0f} s ago'}")
    lines.append(f"vector deletions waiting: {waiting}")
    lines += [f"failed {f.id} {f.filename}: {f.error}" for f in status.failed]
    emit(as_json, {**_plain(status), "pending_deletions": waiting}, lines)


@queue_cli.command("retry")
@command
def queue_retry(
    document_ids: Annotated[
        list[str] | None, typer.Argument(help="Failed documents to queue again.")
    ] = None,
    all_failed: Annotated[
        bool, typer.Option("--all-failed", help="Every failed document.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Queue failed documents again (after fixing what made them fail)."""
    if bool(document_ids) == all_failed:
        raise Failed("give document ids or --all-failed (one of the two).")
    try:
        ids = [uuid.UUID(d) for d in document_ids] if document_ids else None
    except ValueError as exc:
        raise Failed("document ids are UUIDs.") from exc
    with transaction() as session:
        count = queue.retry_failed(session, ids)
    if ids is not None and count < len(ids):
        typer.echo(f"note: {len(ids) - count} of the ids were not failed documents", err=True)
    emit(as_json, {"queued": count}, [f"{count} document(s) queued again"])


# --- reservations ---


@reservations.command("sweep")
@command
def reservations_sweep(
    older_than: Annotated[
        int | None,
        typer.Option(help="Seconds (at least 60); default RESERVATION_TTL_SECONDS.", min=60),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Give back token reservations whose request died with its process (the API processes
    also do this every minute, for reservations older than RESERVATION_TTL_SECONDS)."""
    ttl = get_settings().RESERVATION_TTL_SECONDS if older_than is None else older_than
    given = service.Sweep(0, 0)
    while True:
        with transaction() as session:
            batch = service.sweep_reservations(session, ttl)
        given = service.Sweep(given.reservations + batch.reservations, given.tokens + batch.tokens)
        if batch.reservations == 0:
            break
    emit(
        as_json,
        given,
        [f"gave back {given.reservations} reservation(s), {given.tokens:,} tokens"],
    )


# --- embeddings ---


@embeddings_cli.command("build")
@command
def embeddings_build(
    backend: Annotated[
        str | None,
        typer.Option(help="onnx or openvino (default: EMBEDDING_BACKEND)."),
    ] = None,
    quantize: Annotated[
        str | None, typer.Option(help="none or int8 (default: EMBEDDING_QUANTIZE).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Export (and quantize) EMBEDDING_MODEL for the backend into EMBEDDING_CACHE_DIR now, so
    that no server or worker builds it on first load; reused when it is already there. Prints
    how close its vectors are to torch's on the shipped calibration passages."""
    from app.rag.embedding_backends import Variant, calibration_passages
    from app.rag.embeddings import Embedder

    settings = get_settings()
    variant = Variant(
        backend or settings.EMBEDDING_BACKEND, quantize or settings.EMBEDDING_QUANTIZE
    )
    if variant.backend not in ("onnx", "openvino") or variant.quantize not in ("none", "int8"):
        raise Failed("give --backend onnx|openvino and --quantize none|int8.")
    embedder = Embedder(
        settings.EMBEDDING_MODEL,
        settings.EMBEDDING_DEVICE,
        settings.EMBEDDING_BATCH_SIZE,
        cache_dir=settings.EMBEDDING_CACHE_DIR,
    )
    try:
        exported, built = embedder.build_export(variant)
    except Exception as exc:  # the backend's packages missing, an export error
        raise Failed(f"cannot build {variant.label}: {' '.join(str(exc).split())[:300]}") from exc
    sample = calibration_passages(limit=64)
    fast = exported.encode(sample, embedder.batch_size)
    reference = embedder.embed_passages(sample)  # torch: this embedder has no backend
    cosines = [
        float(sum(a * b for a, b in zip(x, y, strict=True)))
        for x, y in zip(fast, reference, strict=True)
    ]
    data = {
        "model": embedder.model_name,
        "variant": variant.label,
        "built": built,
        "path": str(exported.folder),
        "mean_cosine_to_torch": sum(cosines) / len(cosines),
        "min_cosine_to_torch": min(cosines),
    }
    emit(
        as_json,
        data,
        [
            f"{'built' if built else 'already built'}: {variant.label} of {embedder.model_name}",
            f"path: {exported.folder}",
            f"cosine to torch on {len(cosines)} passages: mean {data['mean_cosine_to_torch']:.4f},"
            f" min {data['min_cosine_to_torch']:.4f}",
        ],
    )


def main() -> None:
    get_settings()  # a bad setting is an error before any command runs
    cli()


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:  # settings that do not validate
        errors = exc.errors() if hasattr(exc, "errors") else []
        where = ".".join(map(str, errors[0]["loc"])) if errors else ""
        message = errors[0]["msg"] if errors else str(exc).splitlines()[0]
        print(f"error: settings: {where + ': ' if where else ''}{message}", file=sys.stderr)
        sys.exit(1)
