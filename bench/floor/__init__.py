"""The bare platform floor AIA is measured against, and the hello-world of cold starts.

Each folder is a function served by functions-framework exactly as AIA's are:
`floor_submit` (HTTP: one Firestore create, one Pub/Sub publish), `floor_worker`
(push-triggered CloudEvent: one read, one update) and `hello`.
"""

COLLECTION = "floor_tasks"
