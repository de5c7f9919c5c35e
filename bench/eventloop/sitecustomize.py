"""Put on PYTHONPATH by bench/saturation.py for a gateway process that should run on uvloop:
with CONNQUOTA_BENCH_EVENT_LOOP=uvloop, every `asyncio.run` in the process uses a uvloop loop.
The gateway itself has no such option (see docs/gateway.md, "At saturation")."""

import os

if os.environ.get("CONNQUOTA_BENCH_EVENT_LOOP") == "uvloop":
    import uvloop

    uvloop.install()
