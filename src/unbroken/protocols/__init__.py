"""Wire protocols unbroken speaks. Each lives in its own subpackage (``ai_sdk``)."""
