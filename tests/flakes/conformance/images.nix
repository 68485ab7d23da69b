# Every portable-service and docker image shape (owned by the image-shape work).
lib: {
  packages = { };
}
