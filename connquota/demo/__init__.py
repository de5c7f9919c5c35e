"""`connquota demo`: a mock exchange, gateways as separate processes, consumers and a live view.

Also home of the small pieces the demo and the gateway's component tests share: scaling a
profile's durations to the mock's time scale, and running gateway processes.
"""
