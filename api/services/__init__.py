"""The API's service functions: what handlers call, keyword-only, testable without HTTP."""
