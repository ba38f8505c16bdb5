"""wagate: the WhatsApp customer-service-window gate for Kafka."""

__version__ = "0.1.0"
