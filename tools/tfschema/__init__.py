"""The google provider's real schema, served offline to Terraform by a provider written in Python.

- `python -m tools.tfschema.generate` regenerates `google.schema.json` from the
  `cdktn-provider-google` wheel (see its docstring);
- `python -m tools.tfschema.mirror DIR` installs the offline provider into a
  filesystem mirror and writes a Terraform CLI config that uses it.
"""
