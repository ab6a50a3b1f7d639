"""The OpenAI API (`/v1/*`): routes and the translation to and from the core's runs."""
