"""Job queues: the specs (data), one interface, and its in-process and SAQ implementations."""
