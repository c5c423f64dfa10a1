-- An attempt that could not get the endpoint's OAuth2 token fails before it is sent: error class
-- 'auth'. The old rows satisfy the new check already; NOT VALID + VALIDATE avoids holding an
-- exclusive lock on the history while it is checked.
ALTER TABLE attempts DROP CONSTRAINT attempts_error_class_check;
ALTER TABLE attempts ADD CONSTRAINT attempts_error_class_check
    CHECK (error_class IN ('timeout', 'connect', 'tls', 'http', 'auth')) NOT VALID;
ALTER TABLE attempts VALIDATE CONSTRAINT attempts_error_class_check;
