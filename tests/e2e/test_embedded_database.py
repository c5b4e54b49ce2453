"""The embedded profile's SQLite under several writers, as `make run` has them (web threads, the
Celery worker and beat): a transaction that reads and then writes, while another connection keeps
writing, waits its turn instead of failing with "database is locked".

The suite's own database is PostgreSQL, so this runs the embedded settings in a process of its own,
on a real SQLite file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONTENTION = """
import json, threading, time
import django
django.setup()
from django.db import OperationalError, connection, transaction

with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE counter (id integer PRIMARY KEY, value integer)")
    cursor.execute("INSERT INTO counter VALUES (1, 0), (2, 0)")
connection.close()
done = threading.Event()

def other_writer():
    while not done.is_set():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("UPDATE counter SET value = value + 1 WHERE id = 2")
            time.sleep(0.002)  # holding the write lock
        time.sleep(0.005)  # between transactions, as a real writer is
    connection.close()

writer = threading.Thread(target=other_writer)
writer.start()
committed, failed = 0, []
for _ in range(50):
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT value FROM counter WHERE id = 1")
            cursor.fetchall()
            time.sleep(0.001)
            cursor.execute("UPDATE counter SET value = value + 1 WHERE id = 1")
        committed += 1
    except OperationalError as error:
        failed.append(str(error))
done.set()
writer.join()
with connection.cursor() as cursor:
    cursor.execute("SELECT value FROM counter WHERE id = 1")
    value = cursor.fetchone()[0]
print(json.dumps({"committed": committed, "failed": failed[:3], "value": value}))
"""


def test_read_then_write_waits_for_another_writer_instead_of_failing(tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL"}
    }
    env.update(DJANGO_SETTINGS_MODULE="agentapi.settings.local", AGENTAPI_VAR_DIR=str(tmp_path))
    run = subprocess.run(
        [sys.executable, "-c", CONTENTION], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"committed": 50, "failed": [], "value": 50}
