"""OpenAI's Responses API (`/v1/responses`): routes, the translation of its requests to the
core's runs, its output items and stream events, and its stored responses."""
