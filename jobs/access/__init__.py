"""Who may do what, and how much: API keys, roles and the tenant scope (`auth`), the tenant limits
and their admission at submit (`limits`, `admission`), and the redaction of secrets on every
surface (`redaction`).
"""
