"""The Django Channels site of the benchmark peer (bench/servers/channels_app.py).

``settings.configure_django`` configures Django in code and calls ``django.setup()``;
``asgi.build_application`` returns the ASGI application (the consumer at ``/ws/``).
"""
