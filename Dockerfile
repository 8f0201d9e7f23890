FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
WORKDIR /app

COPY requirements.txt .
# torch's CPU build first: PyPI's default Linux wheel carries CUDA (several GB);
# requirements.txt's torch==2.13.0 is then already satisfied.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -r requirements.txt

COPY . .
RUN useradd --create-home app
USER app

EXPOSE 8000
CMD ["gunicorn", "project.wsgi:application", "--config", "python:project.gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2"]
