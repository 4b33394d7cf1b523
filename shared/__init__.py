"""altinn-mottak: receive Altinn 3 instances and archive them in Azure Blob Storage.

All logic lives in this package; ``function_app.py`` only wires triggers to it.
"""

__version__ = "0.1.0"
