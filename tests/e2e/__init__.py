"""End-to-end tests of `edgeproxy serve`: real Node and nginx origins, real proxy processes, nothing mocked."""
