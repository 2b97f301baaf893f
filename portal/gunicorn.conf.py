"""gunicorn settings for the portal's web process (`make run`, the portal container).

Threads rather than more processes: most of a request's time is waiting on the database or on the
disk, and uploads are a few MB. PORTAL_BIND, PORTAL_WEB_PROCESSES and PORTAL_WEB_THREADS override.
"""

import os

bind = os.environ.get("PORTAL_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("PORTAL_WEB_PROCESSES", "2"))
worker_class = "gthread"
threads = int(os.environ.get("PORTAL_WEB_THREADS", "4"))
timeout = 60  # a request that takes longer is stuck: its process is replaced
graceful_timeout = 20
max_requests = 2000  # recycle processes now and then (bounded memory growth)
max_requests_jitter = 200
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
errorlog = "-"
loglevel = os.environ.get("PORTAL_WEB_LOG_LEVEL", "info")
proc_name = "leukemia-portal-web"
control_socket_disable = True  # one fixed path per user would collide between instances; not used
