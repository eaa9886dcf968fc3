"""The google provider's real schema, served offline to Terraform by a provider written in Python.

- `python -m tools.tfschema.generate` regenerates `google.schema.json` from the
  pinned `cdktn-provider-google` wheel, fetched on first use (see its docstring);
- `python -m tools.tfschema.offline DIR` installs a launcher for the offline
  provider and a Terraform CLI config whose dev override uses it.
"""
