"""`sentiment-score`: score every row of a file (or a directory of parts) with the model, on one machine or on Ray.

Files in, files out, through `contract.predictor`: the same artifact, encoder
and batched forward as the service, so each row gets the probability /predict
would give it. Imports only `contract`, never `app` or `training`.
"""
