import logging
import pickle

import pytest

from image_classifier.data.database import DatabaseSettings, connect, load_settings
from image_classifier.errors import UserError
from image_classifier.secret import Secret


def test_settings_come_from_the_packaged_yaml():
    assert load_settings() == DatabaseSettings(db_host="127.0.0.1", db_name="localdb", db_user="DB_USER_ANALYSIS")


def test_secret_never_shows_its_value():
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2"
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_connection_repr_and_logs_hide_the_password(caplog):
    with caplog.at_level(logging.DEBUG):
        connection = connect(load_settings(), Secret("hunter2"))
    assert "hunter2" not in repr(connection)
    assert "hunter2" not in caplog.text and "DB_USER_ANALYSIS@127.0.0.1/localdb" in caplog.text


def test_empty_password_is_refused():
    with pytest.raises(UserError, match="password is empty"):
        connect(load_settings(), Secret(""))
