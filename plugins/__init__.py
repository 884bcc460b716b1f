"""Built-in voiced plugins, loaded through entry points exactly like any third-party plugin."""
