"""`hsmlb apc-emulator`: an AWS Payment Cryptography endpoint that real boto3 clients talk to.

Serves APC's data plane (rest-json) and a key-discovery slice of its control plane (awsJson1_0)
on one endpoint, verifies SigV4, validates requests against botocore's models and computes
results with `hsmlb.payments.engine` over the dev keys file. For tests and dev clusters only.
"""
