"""The forward path the dialects call once a body is read: admit and wait (`service`), the fields
the gateway owns (`owned`), one exchange with a replica (`upstream`), the stream back (`relay`)."""
