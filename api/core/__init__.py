"""Service pieces shared by the API and the worker: settings, database models, artifact store, job specs,
job state transitions and upload decoding. Nothing here imports FastAPI routers or worker code."""
