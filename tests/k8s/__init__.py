"""The container image and the Helm chart, checked offline: hadolint, helm lint/template, schema validation."""
