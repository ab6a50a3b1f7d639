"""The gateway's own API (`/gateway/*`): routes, schemas and the bodies they take."""
