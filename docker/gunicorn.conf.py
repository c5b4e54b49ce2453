"""gunicorn for the ASGI web process: `gunicorn -c docker/gunicorn.conf.py agentapi.asgi:application`.

One uvicorn event loop per worker process (uvicorn's own --workers loses TCP_NODELAY; DESIGN.md).
Prometheus samples from every worker are added up from PROMETHEUS_MULTIPROC_DIR.
"""

import os

bind = os.environ.get("BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 2))
worker_class = "uvicorn_worker.UvicornWorker"
keepalive = 75
graceful_timeout = 30
timeout = 60
accesslog = None  # the application writes one JSON line per request
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
