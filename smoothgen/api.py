"""The HTTP API's names that the service, its configuration and the `smoothgen serve` command share, in a
module of their own so that none of them imports the HTTP layer (`smoothgen.serve`) for two constants."""

#: The version in every path (/v1/certify, ...) and document ("api": "v1").
API_VERSION = "v1"
#: The endpoints a server may serve (`smoothgen serve --endpoints`).
ENDPOINTS = ("certify", "predict", "center", "generate")
