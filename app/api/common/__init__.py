"""What every surface uses: who is asking (auth), what they may do, the services they get, errors, the OpenAPI document."""
