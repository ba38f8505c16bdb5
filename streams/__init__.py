"""wagate: the WhatsApp customer-service-window gate for Kafka."""

__version__ = "0.3.0"
