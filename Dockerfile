# Astro Runtime image for `astro dev start` (and `astro deploy`). Tag scheme: <Airflow minor>-<Runtime
# patch>, here with the Python 3.11 variant that pyproject.toml requires. Its Airflow must be the
# apache-airflow pin of requirements.txt (3.3.2); the check below stops the build when it is not.
FROM astrocrpublic.azurecr.io/runtime:3.3-7-python-3.11

# The runtime image has already installed packages.txt and requirements.txt and copied this project
# to /usr/local/airflow. Installing the project itself (editable, so edits to include/ and plugins/
# apply) puts braze_currents on the import path and registers the `segment` connection type.
USER root
RUN python -c "import sys, airflow; v = airflow.__version__.split('+')[0]; sys.exit(0 if v == '3.3.2' else f'Airflow {v} in this image, 3.3.2 in requirements.txt: use the Runtime 3.3 tag that has 3.3.2')" \
    && pip install --no-cache-dir --no-deps -e /usr/local/airflow
USER astro
