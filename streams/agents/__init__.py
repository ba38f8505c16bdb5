"""The adapters around the pipeline core: the runner (Kafka in and out), the window timetable, the
template registry follower."""
