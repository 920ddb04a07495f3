"""factkeep: fine-tune language models on new facts without forgetting what they knew.

See README.md for the commands; ``factkeep --help`` lists them.
"""

__version__ = "0.1.0"
