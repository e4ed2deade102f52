"""edgeproxy: Contentstack Personalize-style edge personalization in front of any origin."""

__version__ = "0.1.0"
