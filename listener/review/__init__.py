"""The review web app: a reader checks what the listener analysed, and corrections become labels.

``app.py`` (MONAI Label's HTTP API and the page), ``datastore.py`` (the listener's studies as
the review sees them), ``labels.py`` (the ``original`` and ``final`` labels), ``worklist.py``
(order and active-learning strategies), ``models.py`` (``/info`` and ``/infer``),
``revision.py`` (a corrected SR for the PACS), ``export.py`` (labels as a MURA root),
``auth.py`` (token and session cookie), ``server.py`` (``mura-review`` and the listener's
review process).
"""
