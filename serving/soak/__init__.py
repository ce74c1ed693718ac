"""A soak test of the service: a fixed-rate mix of good and bad requests for minutes on end.

``python -m serving.soak`` (or ``make soak``) prints the server's RSS, the answers by status and
the latency percentiles every minute, and fails on a 5xx, a transport error, a wrong answer, or
RSS that keeps growing after the first minute.
"""
