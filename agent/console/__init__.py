"""The technician's serial console (docs/console.md): one command table shared with siaga ctl."""
