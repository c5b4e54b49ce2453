"""Key rotation: rewrap data keys under the newest master key, and reseal values still under the
master keyring directly. Online (each batch is its own short transaction, rows locked with SKIP
LOCKED so live traffic is never blocked for long), batched and resumable (a rerun picks up whatever
is still under a retired key). Afterwards nothing remains under a retired master key."""

from dataclasses import dataclass

from django.db import transaction

from agentapi.crypto import keyring
from tenants import scoping, secrets
from tenants.models import DataKey


@dataclass
class Progress:
    data_keys: int = 0
    values: int = 0


def _stale_data_keys():
    current = keyring().current_version
    return DataKey.objects.exclude(wrapped__startswith=f"v1:{current}:")


def rewrap_data_keys(batch_size: int) -> int:
    done = 0
    while True:
        with transaction.atomic():
            batch = list(_stale_data_keys().select_for_update(skip_locked=True).order_by("pk")[:batch_size])
            for record in batch:
                context = DataKey.context(record.organization_id, record.version)
                record.wrapped = keyring().encrypt(keyring().decrypt(record.wrapped, context=context), context=context)
                record.save(update_fields=["wrapped"])
        done += len(batch)
        if len(batch) < batch_size:
            return done


def reseal_values(batch_size: int) -> int:
    done = 0
    for model, field, context in secrets.SEALED_FIELDS:
        while True:
            with transaction.atomic():
                rows = model._base_manager.filter(**{f"{field}__startswith": "v1:"})
                batch = list(rows.select_for_update(skip_locked=True).order_by("pk")[:batch_size])
                for row in batch:
                    plaintext = secrets.unseal(row.organization_id, getattr(row, field), context=context(row))
                    setattr(row, field, secrets.seal(row.organization_id, plaintext, context=context(row)))
                    row.save(update_fields=[field])
            done += len(batch)
            if len(batch) < batch_size:
                break
    return done


def remaining() -> Progress:
    """What is still under a retired master key (or the master keyring directly)."""
    counts = Progress(data_keys=_stale_data_keys().count())
    for model, field, _ in secrets.SEALED_FIELDS:
        counts.values += model._base_manager.filter(**{f"{field}__startswith": "v1:"}).count()
    return counts


def rotate(batch_size: int = 200) -> Progress:
    with scoping.dangerously_all_organizations(
        reason="rotate_encryption_keys: rewrap and reseal every organization's secrets"
    ):
        return Progress(data_keys=rewrap_data_keys(batch_size), values=reseal_values(batch_size))
