"""The CVM 2017-03-12 wire protocol: TC3-HMAC-SHA256 auth, action dispatch, response and error envelopes."""
