"""Image bytes over HTTP: resumable uploads and downloads of exported images."""
